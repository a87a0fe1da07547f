"""TensorBoard event files beside metrics.jsonl hold the same values; without tensorboardX a run
says once that it skips them and trains on."""

import json

import pytest

from crystalline.cli import main

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def test_event_files_hold_the_values_of_metrics_jsonl(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--steps", "9", "--eval-interval", "4", "--workers", "2", "--run-dir", str(run),
                 "--no-progress", "--sample", "0"]) == 0
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    acc = event_accumulator.EventAccumulator(str(run), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {"loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "rss", "seconds"} \
        | {f"group_tokens_per_s/g{g:02d}" for g in range(12)}
    assert expected <= tags, sorted(tags)
    for tag in expected:
        if tag.startswith("group_tokens_per_s/"):
            g = int(tag[-2:])
            want = {r["step"]: r["group_tokens_per_s"][g] for r in records}
        else:
            key = tag
            want = {r["step"]: r[key] for r in records if key in r}
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got.keys() == want.keys(), tag
        for step, value in want.items():
            assert got[step] == pytest.approx(value, rel=1e-6, abs=1e-30), (tag, step)
    assert sorted(e.step for e in acc.Scalars("val_loss")) == [3, 7]     # after steps 4 and 8


def test_without_tensorboardx_the_run_says_once_and_trains(tmp_path, monkeypatch, capsys):
    import sys

    import crystalline.tensorboard as tb
    for name in [m for m in sys.modules if m.split(".")[0] == "tensorboardX"] + ["tensorboardX"]:
        monkeypatch.setitem(sys.modules, name, None)                        # imports fail
    monkeypatch.setattr(tb, "_warned", False)
    for name in ("a", "b"):
        assert main(["train", "--steps", "2", "--workers", "1", "--run-dir", str(tmp_path / name),
                     "--no-progress", "--sample", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("skipping TensorBoard") == 1, err
    assert not list(tmp_path.glob("*/events.out.tfevents*"))
    assert (tmp_path / "b" / "metrics.jsonl").is_file()
