"""What a run logs: metrics.jsonl, and the same keys to TensorBoard and Weights & Biases when asked."""

from __future__ import annotations

import json
import sys
import types

import pytest

from grpo.config import LogConfig
from grpo.run_log import WANDB_ID_FILE, RunLog

ROWS = [
    {"step": 1, "loss": 0.5, "reward": 0.25, "reward/mccs": 0.2, "time/generate": 1.5},
    {"step": 2, "loss": 0.4, "reward": 0.5, "reward/mccs": 0.3, "time/generate": 1.25},
]


class FakeWandbRun:
    def __init__(self, **kwargs):
        self.init_kwargs = kwargs
        self.logged: list[tuple[dict, int]] = []
        self.finished = False

    def log(self, data: dict, step: int) -> None:
        self.logged.append((dict(data), step))

    def finish(self) -> None:
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in ``wandb`` module recording every init call and what each run logged."""
    module = types.ModuleType("wandb")
    module.runs = []

    def init(**kwargs):
        module.runs.append(FakeWandbRun(**kwargs))
        return module.runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_wandb_logs_the_metrics_jsonl_keys_at_their_steps(tmp_path, fake_wandb):
    run_log = RunLog(
        tmp_path, enabled=True, options=LogConfig(tensorboard="off", wandb=True), config={"seed": 0}
    )
    for row in ROWS:
        run_log.metrics(row)
    run_log.close()
    (run,) = fake_wandb.runs
    written = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [step for _, step in run.logged] == [row["step"] for row in written]
    for (data, _), row in zip(run.logged, written):
        assert data == {k: v for k, v in row.items() if k != "step"}
    assert run.finished and run.init_kwargs["config"] == {"seed": 0}
    assert run.init_kwargs["dir"] == str(tmp_path) and run.init_kwargs["project"] == "mrg-grpo"


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, fake_wandb):
    options = LogConfig(tensorboard="off", wandb=True)
    RunLog(tmp_path, enabled=True, options=options).close()
    RunLog(tmp_path, enabled=True, options=options).close()
    first, second = fake_wandb.runs
    assert first.init_kwargs["id"] == second.init_kwargs["id"]
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == first.init_kwargs["id"]
    assert second.init_kwargs["resume"] == "allow"


def test_no_wandb_run_on_other_ranks_or_when_off(tmp_path, fake_wandb):
    RunLog(tmp_path / "rank1", enabled=False, options=LogConfig(wandb=True)).metrics(ROWS[0])
    RunLog(tmp_path / "off", enabled=True, options=LogConfig(tensorboard="off")).metrics(ROWS[0])
    assert fake_wandb.runs == []


def test_missing_wandb_names_the_option(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.raises(ImportError, match="log.wandb=true needs wandb"):
        RunLog(tmp_path, enabled=True, options=LogConfig(tensorboard="off", wandb=True))


def test_tensorboard_on_without_tensorboard_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"\.\[log\]"):
        RunLog(tmp_path, enabled=True, options=LogConfig(tensorboard="on"))
    RunLog(tmp_path, enabled=True, options=LogConfig(tensorboard="auto")).metrics(ROWS[0])  # auto: no error


def test_tensorboard_events_hold_the_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_log = RunLog(tmp_path, enabled=True, options=LogConfig(tensorboard="on"))
    for row in ROWS:
        run_log.metrics(row)
    run_log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {k for k in ROWS[0] if k != "step"}
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 0.5), (2, pytest.approx(0.4))]


@pytest.mark.slow
def test_real_wandb_offline_run_writes_locally(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_log = RunLog(tmp_path, enabled=True, options=LogConfig(tensorboard="off", wandb=True))
    for row in ROWS:
        run_log.metrics(row)
    run_log.close()
    offline_runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
