"""Two CPU processes under torchrun (gloo): DDP keeps the ranks' trainable parameters identical, and train.py
runs as the README's torchrun command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import launch
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from data.synthetic import generate_world

    return generate_world(tmp_path_factory.mktemp("world"), n=16, seed=1, image_size=56)


def torchrun(*args, timeout=300):
    result = launch.torchrun(*args, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


overrides = launch.ddp_overrides


@pytest.mark.slow
@pytest.mark.parametrize("zero1", [False, True], ids=["ddp", "ddp+zero1"])
def test_ddp_ranks_end_with_identical_trainable_parameters(tiny_model_dir, world, tmp_path, zero1):
    """Also with ZeRO-1 (optimizer state sharded across ranks, consolidated on rank 0 for the checkpoint)."""
    out = tmp_path / "result.json"
    torchrun(
        ROOT / "tests" / "ddp_worker.py",
        out,
        *overrides(tiny_model_dir, world, tmp_path / "run"),
        "max_steps=2",
        f"optim.zero1={str(zero1).lower()}",
    )
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and result["same_dataset"]
    assert result["moved"] > 0 and result["grad_signal"] > 0, "no gradient: the test would pass trivially"
    assert result["max_abs_diff_between_ranks"] == 0.0
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "optimizer.pt").is_file()


@pytest.mark.slow
def test_two_ranks_give_the_gradient_of_one_process_holding_the_whole_batch(tiny_model_dir, world, tmp_path):
    """Rank 1's completions are longer than rank 0's. The step's gradient over 2 ranks (and over 2
    micro-batches in one process) equals that of one process with the whole batch in one micro-batch, for
    every aggregation and with adv_scale=batch: the denominators are the step's, not each part's."""
    import torch

    worker = ROOT / "tests" / "step_gradient_worker.py"
    args = [
        *overrides(tiny_model_dir, world, tmp_path / "run"),
        "grpo.adv_scale=batch",
        "grpo.beta=0.04",
        "sampling.max_new_tokens=12",
    ]
    torchrun(worker, tmp_path / "two.pt", *args)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [
            sys.executable,
            str(worker),
            str(tmp_path / "one.pt"),
            *args,
            f"output_dir={tmp_path / 'run-one'}",
        ],  # (a folder holding a run is not reused)
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-4000:]
    two, one = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    for aggregation in ("sequence", "token", "dr_grpo"):
        whole = one[aggregation]
        assert whole.norm() > 0
        tolerance = 1e-5 * whole.abs().max().item()
        torch.testing.assert_close(two[aggregation], whole, rtol=1e-4, atol=tolerance)
        torch.testing.assert_close(one[f"{aggregation}/accumulated"], whole, rtol=1e-4, atol=tolerance)
    assert not torch.allclose(one["token"], one["sequence"], rtol=1e-3)  # the aggregations do differ


@pytest.mark.slow
def test_train_py_runs_under_torchrun_and_rank_zero_writes_the_run(tiny_model_dir, world, tmp_path):
    run = tmp_path / "run"
    # two SFT warm-up steps (the demo's are 600) exercise the SFT -> GRPO hand-over under torchrun
    torchrun("train.py", *overrides(tiny_model_dir, world, run), "max_steps=2", "log_every=1", "sft.steps=2")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # one line per step: only rank 0 writes
    # 2 ranks x 1 study x 2 micro-steps x G=4 completions per step
    assert (run / "final_adapter" / "adapter_model.safetensors").is_file()
    assert (run / "sft" / "final_adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_dynamic_sampling_keeps_the_ranks_in_step_and_every_batch_full(tiny_model_dir, world, tmp_path):
    """Rank 0's groups mostly have no reward spread, rank 1's all do: rank 0 needs more rounds, both draw
    them (the same collectives, so no rank waits forever), and each trains on 2 micro-batches of 1 study
    per step."""
    out = tmp_path / "result.json"
    torchrun(
        ROOT / "tests" / "dynamic_worker.py",
        out,
        *overrides(tiny_model_dir, world, tmp_path / "run"),
        "max_steps=3",
        "grpo.dynamic_sampling=true",
        "grpo.max_resample_rounds=3",
    )
    result = json.loads(out.read_text())
    assert result["world_size"] == 2
    draws = result["draws"]
    assert draws[0] == draws[1] and len(draws[0]) == 3, draws  # the same rounds on both ranks, every step
    assert [d - 1 for d in draws[0]] == result["rounds"] and sum(result["rounds"]) >= 1
    assert result["batches"] == [[[1, 1]] * 3] * 2  # grad_accum micro-batches of prompts_per_device studies
    assert sum(result["filtered"]) >= 1
    assert result["max_abs_diff_between_ranks"] == 0.0
