"""Dynamic balancing: one step on any tree still equals one single-thread step, every sequence of
a step is computed exactly once, the chunk counter never hands a chunk out twice, and stop,
pause and faults behave as with static balancing."""

import threading
from collections import Counter

import numpy as np
import pytest

from crystalline import Trainer
from crystalline.config import preset
from crystalline.data.batching import Batches
from crystalline.engine.balance import SharedChunks, chunk_schedule
from crystalline.engine.optimizer import ADAM_EPS, learning_rate
from crystalline.errors import ConfigError, TrainingError
from crystalline.model.gpt import GPT
from crystalline.model.kernels.adamw import adamw_step
from crystalline.model.kernels.clip import grad_norm, scale_

MODEL_CFG, TRAIN_CFG = preset("tiny")
TRAIN_CFG = TRAIN_CFG.replace(batch_size=24, eval_interval=0)


def dynamic(corpus, **kw):
    return Trainer(MODEL_CFG, kw.pop("train_cfg", TRAIN_CFG), corpus, balance="dynamic", **kw)


def reference_params(corpus, steps):
    """Single-thread training on the same global batches: forward, backward, clip, AdamW."""
    model = GPT(MODEL_CFG, seed=TRAIN_CFG.seed)
    train, _ = corpus.split(0.1)
    T, B = MODEL_CFG.block_size, TRAIN_CFG.batch_size
    batches = Batches(train, T, B, TRAIN_CFG.seed)
    m, v = np.zeros_like(model.params), np.zeros_like(model.params)
    x, y = np.empty((B, T), np.int32), np.empty((B, T), np.int32)
    losses = []
    for step in range(steps):
        batches.fill(step, 0, B, x, y)
        losses.append(model.forward(x, y))
        grad = model.backward()
        norm = grad_norm(grad)
        if norm > TRAIN_CFG.grad_clip:
            scale_(grad, TRAIN_CFG.grad_clip / norm)
        adamw_step(model.params, grad, m, v, model.decay_mask, learning_rate(step, TRAIN_CFG),
                   TRAIN_CFG.beta1, TRAIN_CFG.beta2, ADAM_EPS, TRAIN_CFG.weight_decay, step + 1)
    return model.params.copy(), losses


@pytest.fixture(scope="module")
def reference(shakespeare):
    return reference_params(shakespeare, 3)


def assert_close_params(got, want):
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-5 * scale, np.abs(got - want).max() / scale


@pytest.mark.parametrize("workers", [2, 5, 12, 63])
def test_dynamic_tree_equals_single_thread(shakespeare, reference, workers):
    params, losses = reference
    with dynamic(shakespeare, workers=workers) as tr:
        got = [tr.step().loss for _ in range(3)]
    np.testing.assert_allclose(got, losses, rtol=1e-5)
    assert_close_params(tr.model.params, params)


def test_switching_balance_between_steps_keeps_the_invariant(shakespeare, reference):
    with Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=5) as tr:
        for balance in ("dynamic", "static", "dynamic"):
            tr.set_balance(balance)
            tr.step()
        assert tr.history[0]["balance"] == "dynamic" and tr.history[1]["balance"] == "static"
    assert_close_params(tr.model.params, reference[0])


@pytest.mark.parametrize("workers", [2, 5, 63])
def test_every_sequence_of_a_step_is_computed_exactly_once(shakespeare, workers):
    seen: dict[str, list] = {}                   # thread name -> rows of x it computed
    train, _ = shakespeare.split(0.1)
    T, B = MODEL_CFG.block_size, TRAIN_CFG.batch_size
    with dynamic(shakespeare, workers=workers) as tr:
        original = tr.model.forward_into

        def forward_into(ws, x, y, params=None):
            seen.setdefault(threading.current_thread().name, []).extend(map(bytes, x))
            return original(ws, x, y, params)
        tr.model.forward_into = forward_into
        for step in range(3):
            seen.clear()
            tr.step()
            # What the step should have computed, from the corpus and the step's offsets.
            offsets = Batches(train, T, B, TRAIN_CFG.seed).offsets(step)
            expected = Counter(bytes(train[o:o + T].astype(np.int32)) for o in offsets)
            computed = Counter(row for rows in seen.values() for row in rows)
            assert computed == expected
            # The recorded assignment explains the step: each sequence once, each worker's
            # chunks are the rows its own thread computed.
            assignment = tr.last_assignment
            assert sorted(i for chunks in assignment for first, n in chunks
                          for i in range(first, first + n)) == list(range(B))
            assert tr.history[-1]["assignment"] == assignment
            for sphere in tr.hierarchy.workers:
                rows = seen.get(f"sphere-{sphere.id}-worker", [])
                want = [bytes(train[offsets[i]:offsets[i] + T].astype(np.int32))
                        for first, n in assignment[sphere.worker_index]
                        for i in range(first, first + n)]
                assert rows == want


def test_static_assignment_is_the_fixed_split(shakespeare):
    with Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=5) as tr:
        tr.step()
        assert tr.last_assignment == [[(0, 5)], [(5, 5)], [(10, 5)], [(15, 5)], [(20, 4)]]
        assert "assignment" not in tr.history[-1]


@pytest.mark.parametrize("count, workers", [(1, 2), (24, 2), (24, 5), (64, 2), (64, 12),
                                             (64, 63), (7, 144), (250, 3), (64, 1)])
def test_chunk_schedule_covers_the_batch_largest_first(count, workers):
    starts, sizes = chunk_schedule(count, workers)
    assert sizes.sum() == count and (sizes > 0).all()
    np.testing.assert_array_equal(starts, np.concatenate(([0], np.cumsum(sizes)[:-1])))
    assert (np.diff(sizes) <= 0).all()
    assert len(sizes) >= min(workers, count // 2) or workers == 1


def test_chunks_are_taken_once_each_by_racing_threads():
    chunks = SharedChunks(10, 20_000, 8)
    taken: list[list[int]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def take(i):
        start.wait()
        while (k := chunks.take()) >= 0:
            taken[i].append(k)
    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(k for ks in taken for k in ks) == list(range(chunks.n_chunks))
    assert chunks.starts[0] == 10 and chunks.take() == -1
    chunks.reset()
    assert chunks.take() == 0


def test_a_slowed_worker_takes_fewer_sequences(shakespeare):
    with dynamic(shakespeare, workers=2, train_cfg=TRAIN_CFG.replace(batch_size=48)) as tr:
        tr.step()
        tr.set_stragglers({0: 8.0})
        done = np.zeros(2)
        for _ in range(4):
            tr.step()
            done += [sum(n for _, n in chunks) for chunks in tr.last_assignment]
    assert done.sum() == 4 * 48 and done[0] < done[1]


def test_bad_balance_is_a_clear_error(shakespeare):
    with pytest.raises(ConfigError, match="balance='round_robin' is not a balance mode"):
        Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=2, balance="round_robin")
    with Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=2) as tr:
        with pytest.raises(ConfigError, match="balance"):
            tr.set_balance("Dynamic")
        assert tr.balance == "static"


# ------------------------------------------------------------------ faults, as with static
def test_a_worker_that_raises_names_itself_and_leaves_parameters_as_before(shakespeare):
    with dynamic(shakespeare, workers=5) as tr:
        tr.step()
        original, target = tr.model.backward_into, f"sphere-{tr.hierarchy.workers[3].id}-worker"

        def backward_into(ws, grad, dloss, **kw):
            if threading.current_thread().name == target:
                raise RuntimeError("injected")
            original(ws, grad, dloss, **kw)
        tr.model.backward_into = backward_into
        for _ in range(50):            # worker 3 may take no chunk in a step; it will in one
            before = tr.model.params.copy()
            try:
                tr.step()
            except TrainingError as e:
                assert "worker 3, " in str(e) and "injected during train step" in str(e)
                break
        else:
            pytest.fail("worker 3 never took a chunk")
        assert np.array_equal(tr.model.params, before) and tr.optimizer.t == tr.steps_done
        tr.model.backward_into = original
        tr.step()                      # the next step rebuilds the tree
        assert np.isfinite(tr.model.params).all()


def test_non_finite_gradient_is_skipped_in_dynamic_mode(shakespeare):
    with dynamic(shakespeare, workers=2) as tr:
        original = tr.model.backward_into

        def backward_into(ws, grad, dloss, **kw):
            original(ws, grad, dloss, **kw)
            if tr.steps_done == 1:
                grad[7] = np.nan
        tr.model.backward_into = backward_into
        tr.step()
        before = tr.model.params.copy()
        assert tr.step().skipped
        assert np.array_equal(tr.model.params, before)
        assert not tr.step().skipped and np.isfinite(tr.model.params).all()


def test_stop_and_pause_storm_in_dynamic_mode_never_hangs_or_half_applies(shakespeare):
    before = set(threading.enumerate())
    rng = np.random.default_rng(2)
    tr = dynamic(shakespeare, workers=3, stragglers={1: 3.0})
    snapshots = {0: tr.model.params.copy()}
    original_update = tr._update

    def update(grad, loss_sum):
        result = original_update(grad, loss_sum)
        snapshots[tr.steps_done] = tr.model.params.copy()
        return result

    tr._update = update
    for trial in range(60):
        tr.start()
        if rng.random() < 0.3:
            tr.pause()
            tr.resume()
        stopper = threading.Timer(float(rng.uniform(0, 0.02)), tr.stop)
        stopper.start()
        stopper.join(30)
        assert not stopper.is_alive(), f"trial {trial}: stop() hung"
        assert tr.driver_error is None, tr.driver_error
        assert np.array_equal(tr.model.params, snapshots[tr.steps_done]), f"trial {trial}"
    assert tr.steps_done > 0
    assert set(threading.enumerate()) <= before


def test_stop_wakes_a_sleeping_straggler(shakespeare):
    with dynamic(shakespeare, workers=2) as tr:
        tr.step()
        tr.set_stragglers({0: 1e6})          # would sleep for hours after its first chunk
        slept, done_then = threading.Event(), []
        original, target = tr.model.backward_into, f"sphere-{tr.hierarchy.workers[0].id}-worker"

        def backward_into(ws, grad, dloss, **kw):
            original(ws, grad, dloss, **kw)
            if threading.current_thread().name == target and not slept.is_set():
                done_then.append(tr.steps_done)      # steps finished before the one it sleeps in
                slept.set()
        tr.model.backward_into = backward_into
        tr.start()          # (worker 1 may take every chunk of a step: worker 0 then sleeps later)
        assert slept.wait(30)
        stopper = threading.Timer(0.0, tr.stop)
        stopper.start()
        stopper.join(30)
        assert not stopper.is_alive(), "stop() waited for the straggler's sleep"
        assert tr.steps_done == done_then[0] and tr.state == "stopped"     # its step abandoned
        tr.set_stragglers({})
        tr.model.backward_into = original
        assert tr.step().step == done_then[0]


def test_dynamic_stats_count_each_computed_sequence_once(shakespeare):
    with dynamic(shakespeare, workers=5) as tr:
        for _ in range(2):
            tr.step()
        snap = tr.stats.snapshot()
    workers = snap["role"] == "worker"
    assert snap["tokens"][workers].sum() == 2 * TRAIN_CFG.batch_size * MODEL_CFG.block_size
