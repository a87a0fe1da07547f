"""Deterministic batches: same (seed, step) -> same sequences, however workers split the batch."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crystalline.data.batching import Batches
from crystalline.errors import ConfigError, DataError

TOKENS = np.arange(1000, dtype=np.int32) * 7 % 256


def test_offsets_are_deterministic_in_range_and_vary_with_step_and_seed():
    batches = Batches(TOKENS, block_size=16, batch_size=8, seed=3)
    first = batches.offsets(5)
    assert first.dtype == np.int64 and first.shape == (8,)
    assert np.array_equal(first, Batches(TOKENS, 16, 8, seed=3).offsets(5))
    assert np.array_equal(first, batches.offsets(5))
    assert first.min() >= 0 and first.max() <= len(TOKENS) - 16 - 1
    assert not np.array_equal(first, batches.offsets(6))
    assert not np.array_equal(first, Batches(TOKENS, 16, 8, seed=4).offsets(5))
    first[:] = -1                                            # a returned copy, not the internal one
    assert batches.offsets(5).min() >= 0


def test_offsets_are_the_documented_draw_and_the_default_seed_is_0():
    # written out here: B uniform starts in 0 .. n - T - 1 from default_rng([seed, step])
    n, T, B = len(TOKENS), 16, 8
    for seed, step in ((0, 0), (0, 7), (5, 3)):
        expected = np.random.default_rng([seed, step]).integers(0, n - T, size=B)
        assert np.array_equal(Batches(TOKENS, T, B, seed=seed).offsets(step), expected)
    assert np.array_equal(Batches(TOKENS, T, B).offsets(2),
                          np.random.default_rng([0, 2]).integers(0, n - T, size=B))


def test_sequence_is_x_and_x_shifted_by_one():
    batches = Batches(TOKENS, block_size=16, batch_size=4, seed=0)
    for i, o in enumerate(batches.offsets(2)):
        x, y = batches.sequence(2, i)
        assert x.dtype == np.int32 and y.dtype == np.int32 and x.shape == y.shape == (16,)
        assert np.array_equal(x, TOKENS[o:o + 16]) and np.array_equal(y, TOKENS[o + 1:o + 17])


def test_every_start_can_be_drawn_including_the_last():
    tokens = np.arange(6, dtype=np.int32)           # block 4: starts 0 and 1 only
    batches = Batches(tokens, block_size=4, batch_size=64, seed=0)
    assert set(batches.offsets(0).tolist()) == {0, 1}
    exact = Batches(np.arange(5, dtype=np.int32), block_size=4, batch_size=2, seed=0)
    assert exact.sequence(0, 1)[1].tolist() == [1, 2, 3, 4]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 10**6), st.lists(st.integers(1, 12), min_size=1, max_size=12))
def test_fill_equals_sequence_however_the_batch_is_split(seed, step, sizes):
    B, T = sum(sizes), 8
    batches = Batches(TOKENS, block_size=T, batch_size=B, seed=seed)
    start = 0
    for count in sizes:                          # one worker per size, each with its own buffers
        x_buf = np.full((count + 1, T), -7, np.int32)   # one spare row stays untouched
        y_buf = np.full((count + 1, T), -7, np.int32)
        batches.fill(step, start, count, x_buf, y_buf)
        for r in range(count):
            x, y = batches.sequence(step, start + r)
            assert np.array_equal(x_buf[r], x) and np.array_equal(y_buf[r], y)
        assert (x_buf[count] == -7).all() and (y_buf[count] == -7).all()
        start += count


def test_fill_from_a_read_only_memmap(tmp_path):
    np.save(tmp_path / "t.npy", TOKENS)
    tokens = np.load(tmp_path / "t.npy", mmap_mode="r")
    batches = Batches(tokens, block_size=8, batch_size=4, seed=1)
    x, y = np.zeros((4, 8), np.int32), np.zeros((4, 8), np.int32)
    batches.fill(0, 0, 4, x, y)
    assert np.array_equal(x[3], batches.sequence(0, 3)[0])


def test_short_corpus_names_lengths_and_fix():
    with pytest.raises(DataError) as info:
        Batches(np.arange(10, dtype=np.int32), block_size=10, batch_size=2, seed=0)
    message = str(info.value)
    assert "10 tokens" in message and "block_size = 10" in message and "11" in message
    assert "smaller block_size or more text" in message


@pytest.mark.parametrize("kwargs", [dict(block_size=0), dict(batch_size=-1), dict(seed=-1),
                                    dict(block_size=2.5), dict(batch_size=True), dict(seed=1.5),
                                    dict(seed=True), dict(seed="0")])
def test_bad_sizes(kwargs):
    args = dict(block_size=4, batch_size=2, seed=0) | kwargs
    with pytest.raises(ConfigError):
        Batches(TOKENS, **args)


def test_bad_tokens_steps_and_buffers():
    with pytest.raises(DataError, match="1-D integer"):
        Batches(np.zeros((4, 4), np.int32), 2, 2, 0)
    with pytest.raises(DataError, match="1-D integer"):
        Batches(np.zeros(40, np.float32), 2, 2, 0)
    batches = Batches(TOKENS, block_size=4, batch_size=3, seed=0)
    good = np.zeros((3, 4), np.int32)
    with pytest.raises(ConfigError, match="step"):
        batches.offsets(-1)
    with pytest.raises(ConfigError, match="sequence index"):
        batches.sequence(0, 3)
    with pytest.raises(ConfigError, match="not within the batch"):
        batches.fill(0, 2, 2, good, good.copy())
    for bad in (np.zeros((3, 4), np.int64), np.zeros((2, 4), np.int32), np.zeros((3, 5), np.int32), [[0] * 4] * 3):
        with pytest.raises(ConfigError, match="x_out"):
            batches.fill(0, 0, 3, bad, good)
    read_only = np.zeros((3, 4), np.int32)
    read_only.flags.writeable = False
    with pytest.raises(ConfigError, match="y_out"):
        batches.fill(0, 0, 3, good, read_only)


def test_tokens_of_other_integer_dtypes_are_accepted():
    batches = Batches(TOKENS.astype(np.uint16), block_size=4, batch_size=2, seed=0)
    assert batches.tokens.dtype == np.int32 and batches.sequence(0, 0)[0].dtype == np.int32


def test_every_refusal_names_the_value_and_the_fix_in_full():
    import re
    batches = Batches(TOKENS, block_size=4, batch_size=3, seed=0)
    good = np.zeros((3, 4), np.int32)
    cases = [
        (lambda: Batches(TOKENS, block_size=0, batch_size=2, seed=0), ConfigError,
         "block_size = 0 is invalid: use a positive integer"),
        (lambda: Batches(TOKENS, block_size=4, batch_size=-1, seed=0), ConfigError,
         "batch_size = -1 is invalid: use a positive integer"),
        (lambda: Batches(TOKENS, block_size=4, batch_size=2, seed=-1), ConfigError,
         "seed = -1 is invalid: use a non-negative integer"),
        (lambda: Batches(np.zeros((4, 4), np.int32), 2, 2, 0), DataError,
         "tokens must be a 1-D integer array, got shape (4, 4) dtype int32; pass corpus.tokens or a "
         "split of it"),
        (lambda: Batches(np.arange(10, dtype=np.int32), 10, 2, 0), DataError,
         "the corpus has 10 tokens, too few for block_size = 10 (a sequence needs block_size + 1 = "
         "11); use a smaller block_size or more text"),
        (lambda: batches.offsets(-1), ConfigError, "step = -1 is invalid: use a non-negative integer"),
        (lambda: batches.sequence(0, 3), ConfigError,
         "sequence index 3 is invalid: use 0 <= i < batch_size = 3"),
        (lambda: batches.fill(0, 2, 2, good, good.copy()), ConfigError,
         "sequences 2..2+2 are not within the batch of 3; use 0 <= start and start + count <= batch_size"),
        (lambda: batches.fill(0, -1, 1, good, good.copy()), ConfigError,
         "sequences -1..-1+1 are not within the batch of 3"),
        (lambda: batches.fill(0, 0, 3, np.zeros((3, 4), np.int64), good), ConfigError,
         "x_out must be a writable int32 array of shape (>=3, 4), got ndarray shape (3, 4) dtype int64"),
        (lambda: batches.fill(0, 0, 3, good, [[0] * 4] * 3), ConfigError,
         "y_out must be a writable int32 array of shape (>=3, 4), got list shape None dtype None"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match="^" + re.escape(message)):
            call()
    for bad in (True, 2.0, -1):
        with pytest.raises(ConfigError, match="step = "):
            batches.offsets(bad)
        with pytest.raises(ConfigError, match="sequence index "):
            batches.sequence(0, 3 if bad == -1 else bad)
    fresh = Batches(TOKENS, block_size=4, batch_size=3, seed=0)
    assert fresh.offsets(1).shape == (3,)              # a first call at step 1 draws, never a stale cache
    batches.fill(0, 0, 3, good, good.copy())            # the limits themselves are allowed
    batches.fill(0, 3, 0, good, good.copy())
    assert batches.sequence(0, 2)[0].shape == (4,) and batches.offsets(0).shape == (3,)
