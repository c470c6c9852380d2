"""This project's GRPO trainer against TRL's GRPOTrainer at equal settings: seconds per optimizer step and
peak resident memory, on CPU in fp32.

    pip install trl==1.16.0 psutil matplotlib       # the `bench` extra
    python bench/vs_trl.py                          # tiny and small models, 3 repetitions, ~5 min on 2 cores
    python bench/vs_trl.py --sizes small --reps 5   # more repetitions of the small model only
    python bench/vs_trl.py --profile small          # cProfile of our trainer's steps (where the time goes)
    python bench/vs_trl.py --engine hf              # our side samples with HF generate (default: static)

Both sides get the same Qwen2.5-VL (same weights, tokenizer, processor without the video part), the same
synthetic chest X-ray images and prompts, the same reward function (0.75 MCCS + 0.25 format, rule labeler),
and the settings in SETTINGS (printed at the start): G completions for each of `prompts` studies per
optimizer step, completions forced to exactly `new_tokens` tokens (EOS suppressed until then on both sides:
our `sampling.min_new_tokens`, TRL's `generation_kwargs["min_new_tokens"]`), vision tokens suppressed in
sampling, LoRA rank 8 on the language model's q/k/v/o/gate/up/down projections, beta 0.04 (both compute
reference log-probs with the adapter disabled), one iteration per batch (no old-policy pass), the paper's
per-sequence loss mean (ours `grpo.aggregation=sequence`, TRL `loss_type="grpo"`), the same AdamW settings
and clip, gradient checkpointing off, fp32.

Every measurement runs in a fresh subprocess (one side, one size, one repetition), alternating ours, TRL,
ours, TRL, so neither side's allocations or warm caches count for the other. In each process the first
`--warmup` steps are not timed. Step time: ours from its metrics.jsonl (`step_time_s`: from fetching the
batch to the end of the optimizer step); TRL from `on_step_begin` to `on_step_end` (its batch fetch comes
just before `on_step_begin`, so this slightly favours TRL). The median over all timed steps of all
repetitions is reported. Peak memory: the process's peak RSS (`ru_maxrss`, includes Python, torch and the
libraries each side imports); "train +" is the peak minus the RSS just before training starts.

Sizes: `tiny` is the test model (0.26 M parameters, 2,048 tokens), where per-token Python overhead decides;
`small` (~40 M parameters, Qwen's 151,936-token vocabulary) is where the vocabulary-wide compute and memory
of sampling and log-probs decide. The last line is for the last size measured (small by default):

    step_time_ratio_trl_over_ours=X.XX peak_rss_ratio_trl_over_ours=Y.YY
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    CONTENDED,
    build_policy,
    current_rss_gb,
    make_reward,
    median,
    our_config,
    peak_rss_gb,
    prepare_workdir,
    run_worker,
    uncontended,
)

SETTINGS = {
    "G": 4,  # completions per study
    "prompts": 2,  # studies per optimizer step (one micro-batch: 8 completions)
    "new_tokens": 32,  # every completion is exactly this long
    "temperature": 1.0,
    "top_p": 1.0,  # top_k off on both sides
    "beta": 0.04,
    "epsilon": 0.2,
    "num_iterations": 1,
    "aggregation": "per-sequence mean (ours: sequence; TRL: loss_type=grpo)",
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "lora_target_regex": None,  # filled in from model.lora.DEFAULT_TARGET_REGEX
    "lr": 1e-5,
    "weight_decay": 0.1,
    "adam_betas": (0.9, 0.99),
    "max_grad_norm": 0.1,
    "gradient_checkpointing": False,
    "dtype": "float32 (bf16 off)",
    "seed": 0,
}
STEPS = {"tiny": 8, "small": 2}  # timed steps per process
SIZE_NOTES = {
    "tiny": "tiny test model (2,048-token vocabulary): per-token Python overhead dominates",
    "small": "small model (~40 M parameters, vocabulary 151,936): compute and memory dominate",
}


def settings() -> dict:
    from model.lora import DEFAULT_TARGET_REGEX

    return {**SETTINGS, "lora_target_regex": DEFAULT_TARGET_REGEX}


# ------------------------------------------------------------------------------------------ our side


def run_ours(workdir: Path, size: str, warmup: int, steps: int, engine: str = "static") -> dict:
    from grpo.trainer import Trainer

    s = settings()
    annotation, tiny = prepare_workdir(workdir)
    policy = build_policy(tiny, size)
    with tempfile.TemporaryDirectory(dir=workdir) as out:
        cfg = our_config(annotation, tiny, Path(out), s, warmup + steps, [f"sampling.engine={engine}"])
        trainer = Trainer(cfg, reward_fn=make_reward(), policy=policy)
        rss_before = current_rss_gb()
        trainer.train()
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        trainer.close()
    rows = rows[warmup:]
    phases = {
        "generate": "time/generate",
        "reward": "time/reward",
        "ref log-probs": "time/logprob_ref",
        "policy fwd+bwd": "time/train",
        "optimizer": "time/optim",
    }
    return {
        "step_s": [r["step_time_s"] for r in rows],
        "phases": {name: [r[key] for r in rows] for name, key in phases.items()},
        "completion_len": [r["completion_len"] for r in rows],
        "rss_before_train_gb": rss_before,
        "peak_rss_gb": peak_rss_gb(),
    }


# ------------------------------------------------------------------------------------------ TRL side


def trl_dataset(annotation: Path):
    """One row per training image, in TRL's conversational VLM form: the same chat turns our trainer builds
    (data.prompts.build_messages, content in list form) with the image in the `image` column."""
    from datasets import Dataset

    from data.batching import load_images
    from data.prompts import PromptConfig, build_messages
    from data.r2gen import load_annotation

    samples = load_annotation(annotation, "train")
    rows = []
    for sample in samples:
        (image,) = load_images(sample.image_paths)
        rows.append(
            {
                "prompt": build_messages(1, PromptConfig()),
                "image": image,
                "report": sample.report,
                "study_id": sample.study_id,
            }
        )
    return Dataset.from_list(rows)


class PhaseClock:
    """Wraps TRL trainer methods to time the same phases our trainer logs, per optimizer step."""

    def __init__(self):
        self.current: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []

    def add(self, name: str, seconds: float) -> None:
        self.current[name] = self.current.get(name, 0.0) + seconds

    def wrap(self, obj, method: str, name: str) -> None:
        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - t)

        setattr(obj, method, timed)


def run_trl(workdir: Path, size: str, warmup: int, steps: int) -> dict:
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from model.loading import vision_token_ids

    s = settings()
    annotation, tiny = prepare_workdir(workdir)
    model, processor = build_policy(tiny, size)
    reward = make_reward()

    def reward_func(prompts, completions, completion_ids, report, study_id, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [float(x) for x in reward(texts, list(report), list(study_id)).total]

    clock = PhaseClock()
    marks: dict[str, float] = {}
    completion_len: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            marks["begin"] = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kw):
            clock.add("optimizer", time.perf_counter() - marks["after_training_step"])

        def on_step_end(self, args, state, control, **kw):
            clock.current["step"] = time.perf_counter() - marks["begin"]
            clock.steps.append(clock.current)
            clock.current = {}

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                completion_len.append(float(logs["completions/mean_length"]))

    n = s["G"] * s["prompts"]
    with tempfile.TemporaryDirectory(dir=workdir) as out:
        args = GRPOConfig(
            output_dir=out,
            use_cpu=True,
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            per_device_train_batch_size=n,
            num_generations=s["G"],
            gradient_accumulation_steps=1,
            steps_per_generation=1,
            max_completion_length=s["new_tokens"],
            generation_kwargs={
                "min_new_tokens": s["new_tokens"],
                "suppress_tokens": vision_token_ids(processor),
            },
            temperature=s["temperature"],
            top_p=s["top_p"],
            top_k=0,
            beta=s["beta"],
            epsilon=s["epsilon"],
            num_iterations=s["num_iterations"],
            loss_type="grpo",
            scale_rewards="group",
            learning_rate=s["lr"],
            lr_scheduler_type="cosine",
            warmup_steps=0.1,
            weight_decay=s["weight_decay"],
            adam_beta1=s["adam_betas"][0],
            adam_beta2=s["adam_betas"][1],
            max_grad_norm=s["max_grad_norm"],
            max_steps=warmup + steps,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=s["seed"],
            disable_dropout=True,
            dataloader_num_workers=0,
        )
        peft_config = LoraConfig(
            r=s["lora_rank"],
            lora_alpha=s["lora_alpha"],
            lora_dropout=s["lora_dropout"],
            target_modules=s["lora_target_regex"],
            bias="none",
            task_type="CAUSAL_LM",
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward_func,
            args=args,
            train_dataset=trl_dataset(annotation),
            processing_class=processor,
            peft_config=peft_config,
            callbacks=[StepTimer()],
        )
        clock.wrap(trainer, "_generate", "generate")
        clock.wrap(trainer, "_calculate_rewards", "reward")
        clock.wrap(trainer, "_generate_and_score_completions", "rollout")
        clock.wrap(trainer, "_prepare_inputs", "prepare_inputs")
        inner_step = trainer.training_step

        def training_step(*a, **kw):
            t = time.perf_counter()
            try:
                return inner_step(*a, **kw)
            finally:
                marks["after_training_step"] = time.perf_counter()
                clock.add("training_step", marks["after_training_step"] - t)

        trainer.training_step = training_step
        rss_before = current_rss_gb()
        trainer.train()
    rows = clock.steps[warmup:]
    phases = {
        "generate": [r["generate"] for r in rows],
        "reward": [r["reward"] for r in rows],
        # the rest of TRL's rollout: prompt processing (images re-processed), the reference log-prob pass
        "ref log-probs": [r["rollout"] - r["generate"] - r["reward"] for r in rows],
        "policy fwd+bwd": [r["training_step"] - r["prepare_inputs"] for r in rows],
        "optimizer": [r["optimizer"] for r in rows],
    }
    return {
        "step_s": [r["step"] for r in rows],
        "phases": phases,
        "completion_len": completion_len[warmup:],
        "rss_before_train_gb": rss_before,
        "peak_rss_gb": peak_rss_gb(),
    }


def profile_ours(workdir: Path, size: str, steps: int, engine: str = "static", top: int = 30) -> None:
    """cProfile of our trainer's steps (after one warm-up step): the top functions by own time and by
    cumulative time, to see which phase and which call the time goes to."""
    import cProfile
    import pstats

    from grpo.trainer import Trainer

    annotation, tiny = prepare_workdir(workdir)
    policy = build_policy(tiny, size)
    with tempfile.TemporaryDirectory(dir=workdir) as out:
        cfg = our_config(annotation, tiny, Path(out), settings(), 1 + steps, [f"sampling.engine={engine}"])
        trainer = Trainer(cfg, reward_fn=make_reward(), policy=policy)
        trainer.train(stop_after=1)
        profiler = cProfile.Profile()
        t = time.perf_counter()
        profiler.runcall(trainer.train)
        print(f"\n{size}: {(time.perf_counter() - t) / steps:.3f} s per step under cProfile ({steps} steps)")
        trainer.close()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


# ---------------------------------------------------------------------------------------- orchestration


def measure_size(size: str, reps: int, warmup: int, workdir: Path, engine: str = "static") -> dict:
    """Alternate ours / TRL in fresh processes, `reps` times each; pool the timed steps."""
    results = {"ours": [], "trl": []}
    steps = STEPS[size]
    for rep in range(reps):
        for side in ("ours", "trl"):
            t = time.perf_counter()
            flags = ["--worker", side, "--size", size, "--warmup", str(warmup), "--steps", str(steps)]
            out = run_worker(Path(__file__), [*flags, "--workdir", str(workdir), "--engine", engine])
            results[side].append(out)
            print(
                f"  {size} rep {rep + 1}/{reps} {side:<4}: median step {median(out['step_s']):.3f} s, "
                f"peak RSS {out['peak_rss_gb']:.2f} GB  ({time.perf_counter() - t:.0f} s wall, "
                f"other processes used {out['foreign_cpu_frac']:.0%} of the CPU)",
                flush=True,
            )
    return results


def summarize(size: str, results: dict) -> tuple[float, float]:
    kept = {side: uncontended(runs) for side, runs in results.items()}
    notes = [
        f"{side}: {len(runs) - len(kept[side][0])} of {len(runs)} runs left out (contended)"
        for side, runs in results.items()
        if kept[side][1] and len(kept[side][0]) < len(runs)
    ]
    notes += [
        f"{side}: every run was contended, figures are unreliable" for side in results if not kept[side][1]
    ]
    results = {side: kept[side][0] for side in results}

    def pooled(side, key):
        return [v for run in results[side] for v in run[key]]

    def pooled_phase(side, phase):
        return [v for run in results[side] for v in run["phases"][phase]]

    step = {side: median(pooled(side, "step_s")) for side in results}
    peak = {side: median(run["peak_rss_gb"] for run in results[side]) for side in results}
    base = {side: median(run["rss_before_train_gb"] for run in results[side]) for side in results}
    lens = {side: median(pooled(side, "completion_len")) for side in results}
    print(f"\n== {size}: {SIZE_NOTES[size]}")
    print(f"completion length (median tokens): ours {lens['ours']:.0f}, TRL {lens['trl']:.0f}")
    print(f"{'':<22}{'ours':>10}{'TRL':>10}{'TRL/ours':>10}")
    for phase in results["ours"][0]["phases"]:
        a, b = median(pooled_phase("ours", phase)), median(pooled_phase("trl", phase))
        print(f"{phase:<22}{a:>10.4f}{b:>10.4f}{b / a if a > 0 else float('nan'):>10.2f}")
    print(
        f"{'s / optimizer step':<22}{step['ours']:>10.4f}{step['trl']:>10.4f}{step['trl'] / step['ours']:>10.2f}"
    )
    print(f"{'peak RSS GB':<22}{peak['ours']:>10.3f}{peak['trl']:>10.3f}{peak['trl'] / peak['ours']:>10.2f}")
    print(f"{'RSS before train GB':<22}{base['ours']:>10.3f}{base['trl']:>10.3f}")
    grow = {side: peak[side] - base[side] for side in results}
    print(
        f"{'train + (peak-before)':<22}{grow['ours']:>10.3f}{grow['trl']:>10.3f}"
        f"{grow['trl'] / grow['ours'] if grow['ours'] > 0 else float('nan'):>10.2f}"
    )
    for note in notes:
        print(f"note: {note} (other processes used > {CONTENDED:.0%} of the CPU)")
    print(
        f"per-repetition medians (s): ours {[round(median(r['step_s']), 3) for r in results['ours']]}, "
        f"TRL {[round(median(r['step_s']), 3) for r in results['trl']]}"
    )
    return step["trl"] / step["ours"], peak["trl"] / peak["ours"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", choices=("tiny", "small"), default=["tiny", "small"])
    parser.add_argument("--reps", type=int, default=3, help="fresh processes per side and size (A B A B ...)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each process")
    parser.add_argument("--workdir", default="/tmp/mrg-grpo-vs-trl")
    parser.add_argument(
        "--profile", choices=("tiny", "small"), help="cProfile our trainer's steps at this size"
    )
    parser.add_argument("--engine", choices=("static", "hf"), default="static", help="our sampling.engine")
    parser.add_argument("--worker", choices=("ours", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=("tiny", "small"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    if args.profile:
        logging.basicConfig(level=logging.ERROR)
        warnings.filterwarnings("ignore")
        profile_ours(workdir, args.profile, args.steps or STEPS[args.profile], args.engine)
        return
    if args.worker:
        logging.basicConfig(level=logging.ERROR)
        warnings.filterwarnings("ignore")
        import torch

        torch.manual_seed(0)
        if args.worker == "ours":
            out = run_ours(workdir, args.size, args.warmup, args.steps, args.engine)
        else:
            out = run_trl(workdir, args.size, args.warmup, args.steps)
        print(json.dumps(out))
        return

    import torch
    import transformers
    import trl

    prepare_workdir(workdir)  # once, before any timed process
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"{torch.get_num_threads()} threads; equal settings on both sides:"
    )
    for key, value in settings().items():
        print(f"  {key} = {value}")
    print(f"  timed steps per process = {STEPS}, warm-up steps = {args.warmup}, repetitions = {args.reps}")
    print(f"  our sampling.engine = {args.engine}")
    ratios = {}
    t = time.perf_counter()
    for size in args.sizes:
        ratios[size] = summarize(size, measure_size(size, args.reps, args.warmup, workdir, args.engine))
    print(f"\ntotal wall time {time.perf_counter() - t:.0f} s")
    for size, (step_ratio, rss_ratio) in ratios.items():
        print(
            f"{size}: step_time_ratio_trl_over_ours={step_ratio:.2f} peak_rss_ratio_trl_over_ours={rss_ratio:.2f}"
        )
    step_ratio, rss_ratio = ratios[args.sizes[-1]]
    print(f"step_time_ratio_trl_over_ours={step_ratio:.2f} peak_rss_ratio_trl_over_ours={rss_ratio:.2f}")


if __name__ == "__main__":
    main()
