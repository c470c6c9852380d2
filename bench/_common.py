"""Shared pieces of the GRPO benchmarks (bench/vs_trl.py, bench/scaling.py): the work folder (synthetic world
and tiny model folder), the policy at a named size, the reward both trainers score with, our trainer's config,
and process memory figures. Each benchmark runs its measured work in a fresh subprocess, so peak RSS belongs
to one configuration only.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
for path in (str(REPO), str(BENCH_DIR)):
    if path not in sys.path:
        sys.path.insert(0, path)

REWARD_WEIGHTS = {"mccs": 0.75, "format": 0.25}  # the paper's reward, rule labeler (no download)


def prepare_workdir(workdir: Path, n_studies: int = 64) -> tuple[Path, Path]:
    """The synthetic world's annotation.json and the tiny model folder (tokenizer, processor, weights)."""
    from data.synthetic import generate_world, world_texts
    from model.tiny import build_tiny_model

    annotation = workdir / "world" / "annotation.json"
    if not annotation.exists():
        generate_world(annotation.parent, n=n_studies, seed=0)
    tiny = workdir / "tiny"
    if not (tiny / "config.json").exists():
        build_tiny_model(tiny, world_texts(annotation), seed=0)
    return annotation, tiny


def add_model_arguments(parser, default_size: str = "tiny") -> None:
    """--size, --device and --dtype: the model a benchmark measures (sizes from bench/random_qwen.py)."""
    parser.add_argument("--size", choices=("tiny", "small", "7b"), default=default_size)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")


def sync(device: str) -> None:
    """Wait for queued CUDA work, so a wall-clock timer measures it."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def build_policy(tiny_dir: Path, size: str, vocab: int | None = None):
    """(model, processor), fp32 on CPU, identical in every process: the saved tiny model, or a random model
    of a bench/random_qwen.py size (seeded). ``vocab`` widens the tiny model's output vocabulary (random
    rows beyond the tokenizer's ids; the tokenizer never produces them, sampling may)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from model.processor import load_processor

    if size == "tiny" and vocab is None:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32)
        return model.eval(), load_processor(tiny_dir)
    if size == "tiny":
        from model.tiny import TinySizes, tiny_config

        processor = load_processor(tiny_dir)
        config = tiny_config(processor.tokenizer, TinySizes())
        config.text_config.vocab_size = vocab
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.float32)
        model.generation_config.eos_token_id = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
        return model.eval(), processor
    from random_qwen import build_random_qwen

    return build_random_qwen(tiny_dir, size, device="cpu", dtype=torch.float32)


def make_reward():
    """The reward both trainers call: 0.75 MCCS + 0.25 format with the rule labeler (rewards.combine)."""
    from rewards.combine import RewardCombiner
    from rewards.labeling import make_labeler

    return RewardCombiner(REWARD_WEIGHTS, labeler=make_labeler("rules"))


def our_config(annotation: Path, tiny: Path, out_dir: Path, s: dict, steps: int, extra: list[str] = ()):
    """Our TrainConfig for the shared settings ``s`` (see vs_trl.SETTINGS)."""
    from grpo.config import load_config

    return load_config(
        None,
        [
            f"model.path={tiny}",
            "model.dtype=float32",
            f"data.annotation={annotation}",
            f"output_dir={out_dir}",
            "device=cpu",
            f"max_steps={steps}",
            f"seed={s['seed']}",
            f"sampling.group_size={s['G']}",
            f"batch.prompts_per_device={s['prompts']}",
            "batch.grad_accum=1",
            f"sampling.max_new_tokens={s['new_tokens']}",
            f"sampling.min_new_tokens={s['new_tokens']}",
            f"sampling.temperature={s['temperature']}",
            f"sampling.top_p={s['top_p']}",
            f"grpo.beta={s['beta']}",
            f"grpo.eps_low={s['epsilon']}",
            "grpo.aggregation=sequence",
            f"grpo.num_iterations={s['num_iterations']}",
            f"model.lora.rank={s['lora_rank']}",
            f"model.lora.alpha={s['lora_alpha']}",
            f"model.lora.dropout={s['lora_dropout']}",
            f"model.lora.target_regex='{s['lora_target_regex']}'",
            "model.gradient_checkpointing=false",
            f"optim.lr={s['lr']}",
            f"optim.weight_decay={s['weight_decay']}",
            f"optim.betas=[{s['adam_betas'][0]}, {s['adam_betas'][1]}]",
            f"optim.grad_clip={s['max_grad_norm']}",
            "optim.eight_bit='off'",
            "save_every=100000",
            "log_every=1",
            "sample_every=100000",
            *extra,
        ],
    )


def current_rss_gb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e9


def peak_rss_gb() -> float:
    """This process's peak resident set size so far, in GB. Linux's VmHWM where there is one: ``ru_maxrss``
    keeps the high-water mark of the process that forked this one across ``exec``, so a benchmark started by
    a big parent (pytest with the suite loaded) would report the parent's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux and BSD: KiB


def cpu_busy_seconds() -> float:
    """Core-seconds the whole machine has spent busy since boot (/proc/stat; 0 where it does not exist)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float, busy_cores: float = 0.5) -> float:
    """Wait (at most ``max_wait_s``) until other processes use less than ``busy_cores`` cores over one second.
    On a shared 2-core machine a competing process makes torch's spinning threads lose whole time slices, and a
    step can take 10-100x longer. Returns the seconds waited."""
    t0 = time.perf_counter()
    while True:
        before, start = cpu_busy_seconds(), time.perf_counter()
        time.sleep(1.0)
        if (cpu_busy_seconds() - before) / (time.perf_counter() - start) < busy_cores:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > max_wait_s:
            return time.perf_counter() - t0


def run_worker(script: Path, args: list[str], timeout: float = 600.0, quiet_wait_s: float = 20.0) -> dict:
    """Run ``script --worker ...`` in a fresh Python process; its last stdout line is a JSON object. Adds
    ``foreign_cpu_frac``: the share of the machine's CPU time other processes used meanwhile (contention)."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    waited = wait_for_quiet(quiet_wait_s)
    busy0, own0, t0 = cpu_busy_seconds(), _children_cpu_seconds(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    wall = time.perf_counter() - t0
    foreign = (cpu_busy_seconds() - busy0) - (_children_cpu_seconds() - own0)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.splitlines()[-25:])
        raise RuntimeError(f"worker {' '.join(args)} failed (exit {done.returncode}):\n{tail}")
    out = json.loads(lines[-1])
    out["foreign_cpu_frac"] = max(foreign, 0.0) / (wall * (os.cpu_count() or 1))
    out["waited_s"] = waited
    out["wall_s"] = wall
    return out


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


CONTENDED = 0.15  # a run during which other processes used more than this share of the CPU


def uncontended(runs: list[dict]) -> tuple[list[dict], bool]:
    """The runs without contention when there are any, else all of them (and False)."""
    clean = [run for run in runs if run.get("foreign_cpu_frac", 0.0) <= CONTENDED]
    return (clean, True) if clean else (runs, False)


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")
