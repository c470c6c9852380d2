"""Fault injection on the tiny model: what a shared cluster does to a run, and what the run does about it.

Every test breaks something real (a signal, a truncated or planted checkpoint file, a changed config, a torn
log line, a reused or unwritable folder, a truncated PNG, a full disk, a NaN, a reward that raises, a rank
that never arrives, changed data; docs/faults.md lists them) and checks the user-visible outcome: the run
continues exactly as an uninterrupted one, or stops with one line naming the cause, before the model loads
where it can.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import launch
import numpy as np
import pytest
import torch
import yaml

import train
from data.sharding import ShardedBatches
from grpo import checkpoint
from grpo.checkpoint import CheckpointError
from grpo.config import ConfigDriftError, ConfigError, ModelConfig, load_config
from grpo.preemption import Preempted
from grpo.run_dir import RunFolderError
from grpo.trainer import Trainer
from model.optim import cosine_lr_factor
from rewards.combine import RewardOutput

STEPS = 4
RUN = (
    "model.lora.rank=4",
    "model.lora.alpha=8",
    "model.lora.dropout=0.1",
    "sampling.max_new_tokens=6",
    "batch.prompts_per_device=2",
    "optim.warmup_ratio=0.0",
    "optim.grad_clip=1.0",
    "optim.lr=0.02",
    "grpo.beta=0.04",
    f"max_steps={STEPS}",
    "save_every=2",
    "keep_last=2",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from data.synthetic import generate_world

    return generate_world(tmp_path_factory.mktemp("world"), n=12, seed=3, image_size=56)


def overrides(tiny_model_dir, world, out, *extra):
    return [
        f"model.path={tiny_model_dir}",
        f"data.annotation={world}",
        f"output_dir={out}",
        "device=cpu",
        *RUN,
        *extra,
    ]


def make_cfg(tiny_model_dir, world, out, *extra):
    return load_config(None, overrides(tiny_model_dir, world, out, *extra))


def e_share(completions, references, keys):
    r = np.array([t.count("e") / max(len(t), 1) for t in completions], dtype=np.float32)
    return RewardOutput(total=r, terms={"e_share": r})


def signal_at_call(n, signum=signal.SIGTERM):
    """A reward that sends this process ``signum`` while scoring its n-th batch (i.e. mid-step n)."""
    calls = []

    def reward(completions, references, keys):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signum)
        return e_share(completions, references, keys)

    return reward


def run(cfg, **kwargs):
    trainer = Trainer(cfg, reward_fn=kwargs.pop("reward_fn", e_share), **kwargs)
    try:
        trainer.train()
    finally:
        trainer.close()
    return trainer


WALL_CLOCK_KEYS = ("step_time_s", "tokens_per_s")  # differ between identical runs, as time/<phase>


def metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS and not k.startswith("time/")} for r in rows
    ]


def assert_same_run(a_dir, b_dir):
    a, b = metrics(a_dir), metrics(b_dir)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    for row_a, row_b in zip(a, b):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            assert row_a[key] == pytest.approx(row_b[key], rel=1e-5, abs=1e-7), (row_a["step"], key)


@pytest.fixture(scope="module")
def straight(tiny_model_dir, world, tmp_path_factory):
    """The uninterrupted run every recovered run must reproduce."""
    out = tmp_path_factory.mktemp("straight")
    run(make_cfg(tiny_model_dir, world, out))
    return out


@pytest.fixture(scope="module")
def two_checkpoints(tiny_model_dir, world, tmp_path_factory):
    """A run stopped after step 4 of 6, holding the checkpoints of steps 2 and 4 (copy before changing)."""
    out = tmp_path_factory.mktemp("two-checkpoints")
    trainer = Trainer(make_cfg(tiny_model_dir, world, out, "max_steps=6"), reward_fn=e_share)
    trainer.train(stop_after=4)
    trainer.close()
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step-000002", "step-000004"]
    return out


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def cli(tiny_model_dir, world, out, *args, extra=()):
    """train.py's main() on an empty YAML (every key comes from the overrides) -> exit code."""
    config = Path(tempfile.mkdtemp()) / "empty.yaml"
    config.write_text("{}\n")
    return train.main(["--config", str(config), *args, *overrides(tiny_model_dir, world, out, *extra)])


def one_line_error(capsys) -> str:
    """The one error line train.py printed (the progress bar also writes to stderr), and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in re.split(r"[\r\n]+", err) if line.startswith(("error:", "stopped by"))]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the policy model would be loaded (the check must come before it)."""

    def refuse(self, device, policy=None):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(ModelConfig, "load_policy", refuse)


# ------------------------------------------------------------------------------------------ preemption


def test_sigterm_mid_step_checkpoints_that_step_and_resume_auto_equals_the_uninterrupted_run(
    tiny_model_dir, world, tmp_path, straight
):
    out = tmp_path / "run"
    with pytest.raises(Preempted) as stop:
        run(make_cfg(tiny_model_dir, world, out), reward_fn=signal_at_call(3))
    assert stop.value.step == 3 and stop.value.exit_code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM after step 3" in str(stop.value)
    assert (out / "checkpoints" / "step-000003" / checkpoint.MANIFEST_FILE).is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run
    resumed = run(make_cfg(tiny_model_dir, world, out), resume="auto")
    assert resumed.step == STEPS
    assert_same_run(straight, out)


def test_sigint_stops_the_same_way(tiny_model_dir, world, tmp_path):
    with pytest.raises(Preempted) as stop:
        run(make_cfg(tiny_model_dir, world, tmp_path), reward_fn=signal_at_call(1, signal.SIGINT))
    assert stop.value.step == 1 and stop.value.exit_code == 130
    assert checkpoint.latest_checkpoint(tmp_path).name == "step-000001"


def test_resume_auto_starts_fresh_when_the_run_has_no_checkpoint_yet(tiny_model_dir, world, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(make_cfg(tiny_model_dir, world, out), reward_fn=e_share)
    trainer.train(stop_after=1)  # killed before the first checkpoint: a config and one metrics row
    trainer.close()
    run(make_cfg(tiny_model_dir, world, out, "max_steps=2"), resume="auto")
    assert [r["step"] for r in metrics(out)] == [1, 2]


# ---------------------------------------------------------------------------------------- checkpoints


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "truncated optimizer.pt": ("optimizer.pt", _truncate),
    "truncated rng.pt": ("rng.pt", _truncate),
    "truncated scheduler.pt": ("scheduler.pt", _truncate),
    "truncated adapter": ("adapter/adapter_model.safetensors", _truncate),
    "broken trainer_state.json": ("trainer_state.json", lambda p: p.write_text('{"step": 4, "sam')),
    "deleted optimizer.pt": ("optimizer.pt", lambda p: p.unlink()),
    "deleted manifest": ("manifest.json", lambda p: p.unlink()),
}


@pytest.mark.parametrize("fault", list(CORRUPTIONS))
def test_a_corrupt_newest_checkpoint_falls_back_to_the_older_one_with_one_line(
    tiny_model_dir, world, tmp_path, two_checkpoints, fault, caplog, no_model_load
):
    name, damage = CORRUPTIONS[fault]
    out = copy_run(two_checkpoints, tmp_path / "run")
    damage(out / "checkpoints" / "step-000004" / name)
    with caplog.at_level(logging.WARNING, logger="grpo.checkpoint"):
        state = checkpoint.find_resumable(out, rank=0)
    assert state["trainer_state"]["step"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "step-000004" in warnings[0] and "step-000002" in warnings[0]
    assert name.split("/")[-1] in warnings[0] or "manifest" in warnings[0]


def test_a_deleted_optimizer_file_resumes_from_the_older_checkpoint_never_from_fresh_state(
    tiny_model_dir, world, tmp_path, two_checkpoints
):
    """The probe that found 5 of 6 metric rows differing: now the run continues as if never interrupted."""
    out = copy_run(two_checkpoints, tmp_path / "run")
    (out / "checkpoints" / "step-000004" / "optimizer.pt").unlink()
    straight6 = tmp_path / "straight6"
    run(make_cfg(tiny_model_dir, world, straight6, "max_steps=6"))
    resumed = run(make_cfg(tiny_model_dir, world, out, "max_steps=6"), resume=True)
    assert resumed.step == 6
    a, b = metrics(straight6), metrics(out)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for row_a, row_b in zip(a, b):
        for key in row_a:
            assert row_a[key] == pytest.approx(row_b[key], rel=1e-5, abs=1e-7), (row_a["step"], key)


def test_no_usable_checkpoint_stops_with_one_line_and_exit_code_2(
    tiny_model_dir, world, tmp_path, two_checkpoints, capsys, no_model_load
):
    out = copy_run(two_checkpoints, tmp_path / "run")
    for step_dir in checkpoint.list_checkpoints(out):
        _truncate(step_dir / "rng.pt")
    assert cli(tiny_model_dir, world, out, "--resume", extra=("max_steps=6",)) == 2
    line = one_line_error(capsys)
    assert line.startswith("error: no usable checkpoint") and "step-000002/rng.pt" in line


class Payload:
    """Unpickling this runs a command: what a hostile checkpoint file would hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", checkpoint.TENSOR_FILES)
def test_a_pickle_payload_in_a_checkpoint_file_is_refused_without_running(
    tiny_model_dir, world, tmp_path, two_checkpoints, name, capsys, no_model_load
):
    """Even with the manifest rewritten to match (a hostile copy would do that), --resume refuses the file
    in one line and the payload's command never runs."""
    out = copy_run(two_checkpoints, tmp_path / "run")
    marker = tmp_path / "payload-ran"
    for step_dir in checkpoint.list_checkpoints(out):
        with open(step_dir / name, "wb") as f:
            pickle.dump({"state": Payload(marker)}, f)
        checkpoint.write_manifest(step_dir)
    assert cli(tiny_model_dir, world, out, "--resume", extra=("max_steps=6",)) == 2
    line = one_line_error(capsys)
    assert f"{name}: refused or unreadable" in line
    assert not marker.exists(), "the payload ran"


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    torch.save([checkpoint.rng_state()], tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    state = torch.load(tmp_path / "rng.pt", weights_only=True)[0]
    checkpoint.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# --------------------------------------------------------------------------------------- config drift


def test_config_drift_on_resume_is_refused_with_the_changed_keys_then_allowed_and_recorded(
    tiny_model_dir, world, tmp_path, two_checkpoints, capsys, no_model_load, monkeypatch
):
    out = copy_run(two_checkpoints, tmp_path / "run")
    changed = ("max_steps=6", "optim.lr=0.01", "sampling.group_size=2", "log_every=2", "cpu_threads=1")
    assert cli(tiny_model_dir, world, out, "--resume", extra=changed) == 2
    line = one_line_error(capsys)
    assert "optim.lr (0.02 -> 0.01)" in line and "sampling.group_size (4 -> 2)" in line
    assert "log_every" not in line and "cpu_threads" not in line  # harmless keys change freely
    with pytest.raises(ConfigDriftError):
        Trainer(make_cfg(tiny_model_dir, world, out, *changed), resume=True)
    monkeypatch.undo()  # the accepted resume loads the model

    cfg = make_cfg(tiny_model_dir, world, out, *changed)
    trainer = Trainer(cfg, resume=True, reward_fn=e_share, allow_config_change=("optim.lr", "sampling"))
    assert trainer.step == 4
    expected_lr = 0.01 * cosine_lr_factor(4, 6, 0, 0.0)  # the new lr, at the resume step of the schedule
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected_lr)
    trainer.train()
    trainer.close()
    assert metrics(out)[-1]["lr"] == pytest.approx(0.01 * cosine_lr_factor(5, 6, 0, 0.0))
    history = [json.loads(line) for line in (out / "config_history.jsonl").read_text().splitlines()]
    assert history == [
        {**history[0], "step": 4, "changes": {"optim.lr": {"from": 0.02, "to": 0.01},
                                               "sampling.group_size": {"from": 4, "to": 2}}}
    ]  # fmt: skip
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.01 and saved["sampling"]["group_size"] == 2


def test_allow_config_change_rejects_an_unknown_key(tiny_model_dir, world, tmp_path, two_checkpoints):
    out = copy_run(two_checkpoints, tmp_path / "run")
    with pytest.raises(ConfigError, match="unknown key 'optim.learning_rate'"):
        Trainer(
            make_cfg(tiny_model_dir, world, out, "max_steps=6"),
            resume=True,
            allow_config_change=("optim.learning_rate",),
        )


# ---------------------------------------------------------------------------------------- run folder


def test_a_torn_last_metrics_line_is_dropped_on_resume(tiny_model_dir, world, tmp_path, two_checkpoints):
    out = copy_run(two_checkpoints, tmp_path / "run")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.1')  # killed during a write
    trainer = Trainer(make_cfg(tiny_model_dir, world, out, "max_steps=6"), resume=True, reward_fn=e_share)
    trainer.close()
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]


def test_starting_into_a_folder_holding_a_run_is_refused_unless_overwrite(
    tiny_model_dir, world, tmp_path, two_checkpoints, capsys
):
    out = copy_run(two_checkpoints, tmp_path / "run")
    before = (out / "metrics.jsonl").read_text()
    assert cli(tiny_model_dir, world, out, extra=("max_steps=6",)) == 2
    line = one_line_error(capsys)
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert (out / "metrics.jsonl").read_text() == before  # untouched
    run(make_cfg(tiny_model_dir, world, out, "max_steps=1"), overwrite=True)
    assert [r["step"] for r in metrics(out)] == [1]
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step-000001"]


@pytest.mark.parametrize("blocked", ["output", "checkpoints"])
def test_an_unwritable_folder_fails_before_the_model_loads(
    tiny_model_dir, world, tmp_path, blocked, capsys, no_model_load
):
    """(A file where the folder should be: unwritable even for root, who ignores permission bits.)"""
    if blocked == "output":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "run"
    else:
        out = tmp_path / "run"
        out.mkdir()
        (out / "checkpoints").write_text("")
    assert cli(tiny_model_dir, world, out) == 2
    line = one_line_error(capsys)
    assert line.startswith("error: ") and "not writable" in line


def test_missing_chexbert_files_fail_before_the_model_loads(
    tiny_model_dir, world, tmp_path, capsys, no_model_load
):
    extra = (
        "reward.labeler=chexbert",
        f"reward.chexbert_path={tmp_path}/chexbert.pth",
        f"reward.chexbert_tokenizer={tmp_path}/bert",
    )
    assert cli(tiny_model_dir, world, tmp_path / "run", extra=extra) == 2
    line = one_line_error(capsys)
    assert "chexbert.pth" in line or "bert" in line


# ------------------------------------------------------------------------------------------- images


@pytest.fixture
def broken_world(world, tmp_path):
    """A copy of the world where the first image drawn in step 1 is a PNG cut after its header."""
    copy = tmp_path / "world"
    shutil.copytree(world.parent, copy)
    annotation = copy / world.name
    samples = load_config(None, [f"data.annotation={annotation}", "model.path=x"]).data.load_samples()
    first = samples[ShardedBatches(len(samples), 2, seed=0).next_batch()[0]].image_paths[0]
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 3])  # the header still parses
    return annotation, first


def test_a_truncated_png_is_skipped_and_counted_with_skip_bad(tiny_model_dir, broken_world, tmp_path, caplog):
    annotation, bad = broken_world
    cfg = make_cfg(tiny_model_dir, annotation, tmp_path / "run", "max_steps=2", "data.skip_bad=true")
    with caplog.at_level(logging.WARNING, logger="data.sharding"):
        run(cfg)
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["skipped_images"] >= 1
    assert any(str(bad) in r.getMessage() for r in caplog.records)


def test_a_truncated_png_without_skip_bad_stops_with_one_line_after_a_checkpoint(
    tiny_model_dir, broken_world, tmp_path, capsys
):
    annotation, bad = broken_world
    out = tmp_path / "run"
    assert cli(tiny_model_dir, annotation, out) == 2
    line = one_line_error(capsys)
    assert line.startswith("error: cannot read image") and str(bad) in line
    assert checkpoint.latest_checkpoint(out).name == "step-000000"  # nothing was lost: resumable as is


def test_verify_images_full_finds_the_truncated_png_at_start(tiny_model_dir, broken_world, tmp_path, capsys):
    annotation, bad = broken_world
    assert cli(tiny_model_dir, annotation, tmp_path / "run", extra=("data.verify_images=full",)) == 2
    line = one_line_error(capsys)
    assert str(bad) in line


def test_resume_without_a_checkpoint_is_an_error_not_a_fresh_start(
    tiny_model_dir, world, tmp_path, no_model_load
):
    """--resume on a folder with no checkpoint: CheckpointError (--resume auto would start fresh)."""
    with pytest.raises(CheckpointError, match="no checkpoint under"):
        Trainer(make_cfg(tiny_model_dir, world, tmp_path / "run"), resume=True)
    with pytest.raises(RunFolderError):
        (tmp_path / "run2").mkdir()
        (tmp_path / "run2" / "config.yaml").write_text("{}")
        Trainer(make_cfg(tiny_model_dir, world, tmp_path / "run2"))


# ------------------------------------------------------------------------------- real processes, slow


@pytest.mark.slow
def test_ddp_rank_sigterm_both_ranks_checkpoint_and_torchrun_restart_resumes_identically(
    tiny_model_dir, tmp_path
):
    """2 processes (gloo): rank 1 alone gets SIGTERM mid-step. Both finish the step, write one checkpoint and
    exit 143; torchrun --max-restarts=1 restarts them with resume="auto" and the run ends as the
    uninterrupted one did, metric for metric."""
    from data.synthetic import generate_world

    world = generate_world(tmp_path / "world", n=8, seed=1, image_size=56)
    # A restarted worker group must not read the previous group's addresses from torchrun's shared
    # rendezvous store (pytorch/pytorch#135712: "connectFullMesh ... Connection refused" on restart).
    env_extra = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    root = launch.ROOT

    def torchrun(script, first, out, restarts):
        overrides = launch.ddp_overrides(tiny_model_dir, world, out)
        args = (f"--max-restarts={restarts}", root / "tests" / script, first, *overrides, "max_steps=3")
        return launch.torchrun(*args, timeout=600, env_extra=env_extra)

    straight = torchrun("ddp_worker.py", tmp_path / "straight.json", tmp_path / "straight", 0)
    assert straight.returncode == 0, straight.stderr[-3000:]
    marker = tmp_path / "sigterm-sent"
    # Should the restarted gloo group still fail to connect ("connectFullMesh ... Connection refused", the
    # symptom the variable above removes), that is torchrun's transport, not the code under test: one more
    # try, from scratch.
    for attempt in range(2):
        marker.unlink(missing_ok=True)
        run_dir = tmp_path / f"run-{attempt}"
        result = torchrun("preempt_worker.py", marker, run_dir, 1)
        if result.returncode == 0 or "connectFullMesh" not in result.stderr:
            break
    assert result.returncode == 0, result.stderr[-3000:]
    assert marker.exists(), "the signal was never sent: the test would pass trivially"
    # rank 0 prints the same line, unless torchrun ends it first
    assert "rank 1: stopped by SIGTERM after step 2" in result.stderr
    a, b = metrics(tmp_path / "straight"), metrics(run_dir)
    assert [r["step"] for r in b] == [1, 2, 3]
    for row_a, row_b in zip(a, b):
        for key in row_a:
            assert row_a[key] == pytest.approx(row_b[key], rel=1e-5, abs=1e-7), (row_a["step"], key)


@pytest.mark.slow
def test_train_py_on_sigterm_prints_one_line_exits_143_and_resume_auto_finishes(
    tiny_model_dir, world, tmp_path
):
    """The real thing: an external SIGTERM to `python train.py`, then the same command with --resume auto."""
    out = tmp_path / "run"
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    cmd = [
        sys.executable,
        "train.py",
        "--config",
        str(config),
        *overrides(tiny_model_dir, world, out, "max_steps=40", "save_every=100"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, "train.py ended before its first step"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped = [line for line in re.split(r"[\r\n]+", err) if line.startswith("stopped by SIGTERM")]
    assert len(stopped) == 1 and "--resume" in stopped[0] and "Traceback" not in err
    step = int(re.search(r"after step (\d+)", stopped[0]).group(1))
    assert step < 40 and checkpoint.latest_checkpoint(out).name == f"step-{step:06d}"

    resumed = subprocess.run(
        [*cmd, "--resume", "auto"], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in metrics(out)] == list(range(1, 41))


# ------------------------------------------------------------- the faults that remain: the pieces (pure)


def test_nonfinite_steps_count_every_bad_step_and_stop_after_the_limit_in_a_row():
    from grpo.faults import NonFiniteSteps, nonfinite_terms

    assert nonfinite_terms({"loss": float("nan"), "loss/kl": 0.1, "grad_norm": float("inf"), "n": 3}) == [
        "loss", "grad_norm"
    ]  # fmt: skip
    steps = NonFiniteSteps(limit=3)
    assert not steps.record(1, False)
    assert not steps.record(2, True, ("loss",)) and not steps.record(3, True, ("grad_norm",))
    assert not steps.record(4, False)  # a good step ends the streak
    assert not steps.record(5, True, ("loss/kl",)) and not steps.record(6, True)
    assert steps.record(7, True)  # the third in a row
    assert (steps.total, steps.streak, steps.first_bad, steps.first_terms) == (5, 3, 5, ("loss/kl",))
    again = NonFiniteSteps(limit=3)
    again.load_state_dict(steps.state_dict())
    assert again == steps


def test_the_step_flags_ride_on_one_all_reduce(monkeypatch):
    from grpo import distributed
    from grpo.preemption import Agreement, StopSignal

    calls = []
    real = distributed.all_reduce_max_many
    monkeypatch.setattr(distributed, "all_reduce_max_many", lambda *a, **k: calls.append(a) or real(*a, **k))
    stop = StopSignal()
    assert stop.agree(torch.device("cpu"), nonfinite=True) == Agreement(signum=0, nonfinite=True)
    stop.received = signal.SIGTERM
    assert stop.agree(torch.device("cpu")) == Agreement(signum=signal.SIGTERM, nonfinite=False)
    assert stop.agreed(torch.device("cpu")) == signal.SIGTERM
    assert len(calls) == 3  # one collective per call, whatever it carries


def test_a_metrics_line_is_whole_or_absent_on_a_full_disk(tmp_path, monkeypatch):
    import errno

    from grpo import faults

    path = tmp_path / "metrics.jsonl"
    faults.append_line(path, json.dumps({"step": 1}))
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])  # what a filling disk does: part of the line lands
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(faults.os, "write", half_then_full)
    with pytest.raises(faults.DiskFullError, match=r"metrics.jsonl not written \(No space left on device\)"):
        faults.append_line(path, json.dumps({"step": 2, "loss": 0.5}))
    assert path.read_text() == '{"step": 1}\n'  # no torn row


def test_the_free_space_check_names_the_folder_the_bytes_needed_and_free(tmp_path, monkeypatch):
    from grpo import faults

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(faults.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    target = tmp_path / "checkpoints" / "step-000004"
    faults.check_free_space(target, needed=999)
    with pytest.raises(faults.DiskFullError) as caught:
        faults.check_free_space(target, needed=5000, kept=tmp_path / "checkpoints" / "step-000002")
    message = str(caught.value)
    assert str(target) in message and "5000 bytes" in message and "1000 bytes free" in message
    assert "step-000002 kept" in message and "--resume" in message


def test_a_data_fingerprint_names_what_changed(tmp_path):
    from data import fingerprint
    from data.fingerprint import DataDriftError

    (tmp_path / "images").mkdir()
    image = tmp_path / "images" / "a.png"
    image.write_bytes(b"x" * 10)
    annotation = tmp_path / "annotation.json"
    annotation.write_text("{}")
    world = {"synthetic_n": 12, "synthetic_seed": 3, "synthetic_image_size": 56}
    saved = fingerprint.fingerprint(annotation, [image, image], tmp_path / "images", world)
    assert saved["images"]["count"] == 1 and saved["annotation"]["size"] == 2
    assert (
        fingerprint.check(
            saved, fingerprint.fingerprint(annotation, [image], tmp_path / "images", world), allowed=False
        )
        == {}
    )
    image.write_bytes(b"x" * 11)
    annotation.write_text('{"train": []}')
    now = fingerprint.fingerprint(annotation, [image], tmp_path / "images", {**world, "synthetic_seed": 4})
    with pytest.raises(DataDriftError) as caught:
        fingerprint.check(saved, now, allowed=False)
    message = str(caught.value)
    assert "annotation (2 bytes" in message and "-> 13 bytes" in message
    assert (
        "images (1 files, sha256" in message
        and "world" in message
        and "--allow-config-change data" in message
    )
    assert set(fingerprint.check(saved, now, allowed=True)) == {"annotation", "world", "images"}


def test_a_reward_term_that_raises_is_named(monkeypatch):
    from rewards import combine
    from rewards.combine import RewardCombiner, RewardTermError

    class BrokenLabeler:
        def label(self, texts):
            raise KeyError("no such observation")

    with pytest.raises(RewardTermError, match=r"reward term 'labeler \(mccs\)' raised KeyError: 'no such"):
        RewardCombiner({"mccs": 0.75, "format": 0.25}, labeler=BrokenLabeler())(["a"], ["b"], ["k"])

    def broken_format(text):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(combine, "format_reward", broken_format)
    with pytest.raises(RewardTermError) as caught:
        RewardCombiner({"format": 1.0})(["a"], ["b"], ["k"])
    assert caught.value.term == "format" and caught.value.description == "ZeroDivisionError: division by zero"


def _torchrun(*args, timeout=120, env_extra=None):
    return launch.torchrun(*args, timeout=timeout, env_extra=env_extra)


def test_a_rank_that_never_arrives_stops_the_other_with_one_line_and_exit_4():
    """2 processes (gloo, dist_timeout_s=2): rank 1 sleeps through the step's flag all-reduce."""
    result = _torchrun(Path(__file__).parent / "timeout_worker.py", "flags", 7)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: collective timeout")]
    assert lines, result.stderr[-3000:]
    line = lines[0]
    assert "at step 7" in line and "all_reduce (step flags)" in line and "on rank 0" in line, line
    assert "rank 1 did not arrive" in line and "--resume auto" in line, line
    assert "exitcode  : 4" in result.stderr  # rank 0's exit code, as torchrun reports it


# ------------------------------------------------------------------ the faults that remain: end to end


def rows_equal(a_dir, b_dir, steps):
    """Two runs' metrics, row for row (null where a value was not finite)."""
    a, b = metrics(a_dir), metrics(b_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(steps)
    for row_a, row_b in zip(a, b):
        assert row_a.keys() == row_b.keys()
        for key, value in row_a.items():
            if value is None or row_b[key] is None:
                assert value is row_b[key], (row_a["step"], key)
            else:
                assert value == pytest.approx(row_b[key], rel=1e-5, abs=1e-7), (row_a["step"], key)


def no_temporary_folders(out):
    return not list((out / "checkpoints").glob(".tmp-*"))


def test_a_full_disk_at_a_checkpoint_write_keeps_the_last_good_one_and_resume_matches(
    tiny_model_dir, world, tmp_path, straight, monkeypatch
):
    """ENOSPC in the middle of writing step 4's checkpoint (keep_last=1): nothing half-written, step 2 kept
    (rotation waits for the new one to verify), one line naming the folder and the bytes; then --resume
    (space freed) ends as the uninterrupted run."""
    import errno

    from grpo.faults import DiskFullError

    out = tmp_path / "run"
    real_save = torch.save

    def full_at_step_4(obj, path, *args, **kwargs):
        if ".tmp-step-000004" in str(path) and str(path).endswith("scheduler.pt"):
            Path(path).write_bytes(b"half")  # what the disk took before it filled up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_at_step_4)
    with pytest.raises(DiskFullError) as caught:
        run(make_cfg(tiny_model_dir, world, out, "keep_last=1"))
    line = str(caught.value)
    assert line.startswith(f"disk full: {out / 'checkpoints' / 'step-000004'} not written (No space left")
    assert re.search(r"needs about \d+ bytes, \d+ bytes free", line) and "step-000002 kept" in line, line
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step-000002"] and no_temporary_folders(out)
    checkpoint.verify_checkpoint(out / "checkpoints" / "step-000002")
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]  # whole rows, step 4's logged before the save

    monkeypatch.undo()
    run(make_cfg(tiny_model_dir, world, out, "keep_last=1"), resume=True)
    rows_equal(straight, out, range(1, STEPS + 1))


def test_too_little_free_space_stops_before_writing_with_one_line_and_exit_3(
    tiny_model_dir, world, tmp_path, monkeypatch, capsys
):
    from grpo import faults

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(faults.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    out = tmp_path / "run"
    assert cli(tiny_model_dir, world, out, extra=("max_steps=2", "save_every=1")) == 3
    line = one_line_error(capsys)
    assert line.startswith(f"error: disk full: {out / 'checkpoints' / 'step-000002'} not written (checked")
    assert "1000 bytes free" in line and "step-000001 kept" in line and "--resume" in line
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step-000001"] and no_temporary_folders(out)
    monkeypatch.undo()
    assert cli(tiny_model_dir, world, out, "--resume", extra=("max_steps=2", "save_every=1")) == 0
    assert [r["step"] for r in metrics(out)] == [1, 2]


def test_a_full_disk_never_tears_a_metrics_row_and_resume_matches(
    tiny_model_dir, world, tmp_path, straight, monkeypatch
):
    import errno

    from grpo import faults
    from grpo.faults import DiskFullError

    out = tmp_path / "run"
    real_write = os.write

    def full_at_row_3(fd, data):
        if data.startswith(b'{"step": 3,'):
            real_write(fd, data[:20])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(faults.os, "write", full_at_row_3)
    with pytest.raises(DiskFullError, match=r"metrics.jsonl not written \(No space left on device\)"):
        run(make_cfg(tiny_model_dir, world, out))
    assert [r["step"] for r in metrics(out)] == [1, 2]  # every line whole
    monkeypatch.undo()
    run(make_cfg(tiny_model_dir, world, out), resume=True)
    rows_equal(straight, out, range(1, STEPS + 1))


def nan_loss_at(steps):
    """The configured loss, multiplied by NaN in the given optimizer steps (the step the loop is in)."""
    from grpo import distributed
    from grpo.loss import load_loss

    loss_fn = load_loss("grpo")

    def loss(batch, cfg):
        value, stats = loss_fn(batch, cfg)
        return (value * float("nan"), stats) if distributed._step in steps else (value, stats)

    return loss


def test_non_finite_steps_are_not_applied_counted_and_stop_the_run_after_three_in_a_row(
    tiny_model_dir, world, tmp_path
):
    """NaN loss in steps 2, 3 and 4: none is applied (weights, optimizer and lr stay those of step 1), each
    row says so, and the third stops the run after a checkpoint, naming step 2 and the loss. A run
    interrupted mid-streak and resumed counts the same and stops at the same step."""
    from grpo.faults import NonFiniteStop

    loss = nan_loss_at({2, 3, 4})
    straight_nan, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    with pytest.raises(NonFiniteStop) as caught:
        Trainer(
            make_cfg(tiny_model_dir, world, straight_nan, "max_steps=6", "save_every=1", "keep_last=9"),
            reward_fn=e_share,
            loss_fn=loss,
        ).train()
    line = str(caught.value)
    assert line.startswith(
        "stopped after step 4: 3 steps in a row were not finite and not applied (first: step 2"
    )
    assert "not finite: loss, grad_norm" in line and "weights are those of step 1" in line, line
    rows = metrics(straight_nan)
    assert [r["nonfinite_steps"] for r in rows] == [0, 1, 2, 3]
    assert rows[1]["loss"] is None and rows[1]["grad_norm"] is None
    assert rows[1]["lr"] == rows[2]["lr"] == rows[3]["lr"]  # the schedule did not advance
    ckpts = straight_nan / "checkpoints"
    assert (ckpts / "step-000001" / "adapter" / "adapter_model.safetensors").read_bytes() == (
        ckpts / "step-000004" / "adapter" / "adapter_model.safetensors"
    ).read_bytes()
    assert torch.load(ckpts / "step-000004" / "optimizer.pt")["state"][0]["step"] == 1

    cfg = make_cfg(tiny_model_dir, world, interrupted, "max_steps=6", "save_every=1", "keep_last=9")
    trainer = Trainer(cfg, reward_fn=e_share, loss_fn=loss)
    trainer.train(stop_after=3)  # mid-streak: the checkpoint holds a streak of 2
    trainer.close()
    with pytest.raises(NonFiniteStop, match="stopped after step 4: 3 steps in a row"):
        Trainer(cfg, resume=True, reward_fn=e_share, loss_fn=loss).train()
    rows_equal(straight_nan, interrupted, range(1, 5))


def raise_at_step(step):
    from grpo import distributed

    def e_share_then_raise(completions, references, keys):
        if distributed._step == step:
            raise ZeroDivisionError("float division by zero")
        return e_share(completions, references, keys)

    return e_share_then_raise


def test_a_reward_that_raises_checkpoints_the_step_start_and_resume_repeats_the_step(
    tiny_model_dir, world, tmp_path, straight
):
    from grpo.faults import RewardFailed

    out = tmp_path / "run"
    with pytest.raises(RewardFailed) as caught:
        run(make_cfg(tiny_model_dir, world, out), reward_fn=raise_at_step(4))
    line = str(caught.value)
    assert line.startswith(
        "stopped in step 4: reward term 'e_share_then_raise' raised ZeroDivisionError: float"
    )
    assert "step-000003 (the step's start) written" in line and "--resume repeats the step" in line
    assert checkpoint.latest_checkpoint(out).name == "step-000003"  # the last save was step 2
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
    run(make_cfg(tiny_model_dir, world, out), resume=True)
    rows_equal(straight, out, range(1, STEPS + 1))


def test_a_reward_term_that_raises_stops_train_py_with_one_line_naming_it(
    tiny_model_dir, world, tmp_path, monkeypatch, capsys
):
    from rewards import combine

    def broken(*args, **kwargs):
        raise ValueError("labels of unequal length")

    monkeypatch.setattr(combine, "mccs_from_codes", broken)
    out = tmp_path / "run"
    assert cli(tiny_model_dir, world, out, extra=("max_steps=2",)) == 3
    line = one_line_error(capsys)
    assert line.startswith(
        "error: stopped in step 1: reward term 'mccs' raised ValueError: labels of unequal"
    )
    assert checkpoint.latest_checkpoint(out).name == "step-000000" and not (out / "metrics.jsonl").exists()


def test_resume_on_changed_data_is_refused_naming_it_then_allowed_and_recorded(
    tiny_model_dir, world, tmp_path, capsys, monkeypatch
):
    copy = tmp_path / "world"
    shutil.copytree(world.parent, copy)
    annotation = copy / world.name
    out = tmp_path / "run"
    extra = ("max_steps=2", "save_every=1")
    trainer = Trainer(make_cfg(tiny_model_dir, annotation, out, *extra), reward_fn=e_share)
    trainer.train(stop_after=1)
    trainer.close()
    recorded = json.loads((out / "data_fingerprint.json").read_text())
    assert recorded["annotation"]["size"] == annotation.stat().st_size

    content = json.loads(annotation.read_text())
    content["test"][0]["report"] += " Changed."
    annotation.write_text(json.dumps(content))
    image = (
        load_config(None, [f"data.annotation={annotation}", "model.path=x"])
        .data.load_samples()[0]
        .image_paths[0]
    )
    with open(image, "ab") as f:
        f.write(b"\0")  # a re-encoded or re-copied image: same name, other bytes

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(ModelConfig, "load_policy", refuse)
    assert cli(tiny_model_dir, annotation, out, "--resume", extra=extra) == 2
    line = one_line_error(capsys)
    assert line.startswith("error: --resume on data that changed since the run started: annotation (")
    assert "images (" in line and "--allow-config-change data" in line, line
    monkeypatch.undo()

    trainer = Trainer(
        make_cfg(tiny_model_dir, annotation, out, *extra),
        resume=True,
        reward_fn=e_share,
        allow_config_change=("data",),
    )
    trainer.train()
    trainer.close()
    history = [json.loads(line) for line in (out / "config_history.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 1 and "annotation" in history[-1]["data_changes"]
    assert (
        json.loads((out / "data_fingerprint.json").read_text())["annotation"]["size"]
        == annotation.stat().st_size
    )


@pytest.mark.slow
def test_a_rank_asleep_in_training_stops_every_rank_with_one_line_exit_4_and_nothing_half_written(
    tiny_model_dir, world, tmp_path
):
    """train.py under torchrun (gloo, dist_timeout_s=2): rank 1's reward sleeps in step 2. Rank 0 gives up in
    the step's first all-reduce naming rank 1; rank 1, late, finds rank 0 gone; both exit 4 with one line,
    and the run folder holds step 1's checkpoint only, whole (--resume auto continues from it)."""
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    out = tmp_path / "run"
    result = _torchrun(
        Path(__file__).parent / "timeout_worker.py", "train", *overrides(tiny_model_dir, world, out),
        "batch.prompts_per_device=1", "save_every=1", "max_steps=3", env_extra={"EMPTY_CONFIG": str(config)},
        timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: collective timeout")]
    assert any("at step 2" in line and "on rank 0 (rank 1 did not arrive" in line for line in lines), lines
    assert "exitcode  : 4" in result.stderr, result.stderr[-3000:]
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step-000001"] and no_temporary_folders(out)
    checkpoint.verify_checkpoint(out / "checkpoints" / "step-000001")
    assert [r["step"] for r in metrics(out)] == [1]


DDP_RUN = ("batch.prompts_per_device=1", "optim.lr=0.01", "save_every=1", "keep_last=5", "max_steps=3")


def ddp_fault(tiny_model_dir, world, out, mode, step):
    worker = Path(__file__).parent / "fault_worker.py"
    return _torchrun(worker, mode, step, *overrides(tiny_model_dir, world, out), *DDP_RUN, timeout=300)


def rank_lines(stderr):
    """Each rank's one-line error. Two processes share the pipe and rank 0's progress bar ends in a carriage
    return, so a line may start mid-line or run into the other rank's: split on the prefix, not on newlines."""
    return sorted(re.findall(r"rank \d: error: .*?(?=rank \d: error: |$)", stderr, flags=re.M))


@pytest.fixture(scope="module")
def ddp_straight(tiny_model_dir, world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp-straight") / "run"
    result = ddp_fault(tiny_model_dir, world, out, "none", 0)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_ddp_a_nan_on_one_rank_is_skipped_by_both(tiny_model_dir, world, tmp_path):
    out = tmp_path / "run"
    result = ddp_fault(tiny_model_dir, world, out, "nan", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = metrics(out)
    assert [r["nonfinite_steps"] for r in rows] == [0, 1, 1] and rows[1]["loss"] is None
    a, b = torch.load(out / "params-rank0.pt"), torch.load(out / "params-rank1.pt")
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # both ranks skipped the same step


@pytest.mark.slow
def test_ddp_a_reward_raising_on_one_rank_stops_both_and_resume_matches(
    tiny_model_dir, world, tmp_path, ddp_straight
):
    out = tmp_path / "run"
    result = ddp_fault(tiny_model_dir, world, out, "reward", 2)
    assert result.returncode != 0 and "exitcode  : 3" in result.stderr, result.stderr[-3000:]
    lines = rank_lines(result.stderr)  # (torchrun may end rank 0 before it prints: the first exit ends all)
    assert lines and all(
        line.startswith(f"rank {line[5]}: error: stopped in step 2: reward term ") for line in lines
    )
    assert any(
        line.startswith("rank 1: error: stopped in step 2: reward term 'reward' raised KeyError: 'study")
        for line in lines
    ) or any("(on another rank, see its log)" in line for line in lines), lines
    assert checkpoint.latest_checkpoint(out).name == "step-000001"
    resumed = ddp_fault(tiny_model_dir, world, out, "none", 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows_equal(ddp_straight, out, range(1, 4))


@pytest.mark.slow
@pytest.mark.parametrize("where", ["disk", "metrics"], ids=["checkpoint", "metrics-row"])
def test_ddp_a_full_disk_on_rank_0_stops_both_with_the_same_line(tiny_model_dir, world, tmp_path, where):
    """Rank 0 alone writes: its full disk reaches rank 1 through the save's shared outcome (a metrics row
    rank 0 could not write is raised there too), so neither waits for the other."""
    out = tmp_path / "run"
    result = ddp_fault(tiny_model_dir, world, out, where, 2)
    assert result.returncode != 0 and "exitcode  : 3" in result.stderr, result.stderr[-3000:]
    lines = rank_lines(result.stderr)
    # the same line on each rank (torchrun may end one rank before it prints: the first exit ends the rest)
    assert lines and len({line[len("rank 0") :] for line in lines}) == 1, result.stderr[-3000:]
    written = "checkpoints/step-000002" if where == "disk" else "metrics.jsonl"
    assert f"{written} not written (No space left on device)" in lines[0], lines
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step-000001"] and no_temporary_folders(out)
    assert [r["step"] for r in metrics(out)] == ([1, 2] if where == "disk" else [1])


def test_torch_saves_own_error_on_a_full_disk_counts_as_one(tmp_path, monkeypatch):
    """On a full tmpfs torch.save raises RuntimeError("... unexpected pos 28800 vs 28688"), no errno: with the
    disk left with less than the checkpoint needs, that is a full disk too (found on a real 2 MB tmpfs)."""
    from grpo import faults

    def adapter(folder):
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"w")

    def save(step):
        return checkpoint.save_checkpoint(
            tmp_path, step, {}, adapter, {"s": 1}, {"e": 1}, keep_last=1, is_main=True
        )

    save(1)

    def broken(obj, path, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 28800 vs 28688")

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(faults.shutil, "disk_usage", lambda p: usage._replace(free=1 << 19))
    with pytest.raises(faults.DiskFullError, match=r"step-000002 not written \(\[enforce fail"):
        save(2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-000001"]
    assert no_temporary_folders(tmp_path)
    monkeypatch.setattr(faults.shutil, "disk_usage", lambda p: usage._replace(free=1 << 40))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # plenty of space: not the disk, passed on
        save(2)
