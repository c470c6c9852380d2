"""The paper's Table II in the synthetic world: which reward makes reports clinically right?

For each seed: one SFT run (the demo's warm start, from the pretrained synthetic base), then GRPO from that
same SFT adapter under each reward of the paper's ablation: NLG (BLEU-4 + ROUGE-L + CIDEr-D), format only,
CE-F1, CE-F1 + format, MCCS, MCCS + format. Every row runs the demo's recipe (configs/demo.yaml) and
differs from the others only in ``reward.weights``. Each model writes greedy reports for the world's test
split (one per study), which are scored against the studies' TRUE labels (so a labeler error cannot look
like a model error): CE micro- and macro-F1 over the 14 observations, uncertain as negative.

    python bench/table2.py                    # 3 seeds, the demo's step counts (75 minutes on 2 cores)
    python bench/table2.py --quick            # 3 seeds, a third of the steps: a rough table
    python bench/table2.py --jobs 1           # one run at a time (default 2: the cores shared between them)
    python bench/table2.py --sft-lr 5e-4 --sft-steps 150 --out runs/table2-gentle   # another SFT start

Writes ``<out>/table2.json`` (every run's figures and the summary), ``<out>/table2.md`` and
``<out>/table2.png``; prints the table and whether the paper's ordering holds within the seeds' spread.
Finished runs are reused when the command is run again (delete ``<out>`` to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grpo.config import load_config  # noqa: E402

DEMO = ROOT / "configs" / "demo.yaml"
# (row name, reward weights) in the paper's Table II order; the weights of the combined rows are the paper's.
GRPO_ROWS = (
    ("NLG", {"nlg": 1.0}),
    ("format", {"format": 1.0}),
    ("CE-F1", {"cef1": 1.0}),
    ("CE-F1 + format", {"cef1": 0.75, "format": 0.25}),
    ("MCCS", {"mccs": 1.0}),
    ("MCCS + format", {"mccs": 0.75, "format": 0.25}),
)
# The paper's claim, as an ordering of rows by CE-F1 (Table II, IU X-Ray).
PAPER_ORDER = ("MCCS + format", "MCCS", "CE-F1", "NLG", "SFT")


def slug(name: str) -> str:
    return name.lower().replace(" + ", "_").replace("-", "").replace(" ", "_")


def run(cmd: list[str], log_file: Path) -> None:
    """Run one command (a fresh process per run: threads and memory start clean), its output to a log."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as sink:
        done = subprocess.run(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}); see {log_file}")


def train(run_dir: Path, overrides: list[str]) -> None:
    if (run_dir / "final_adapter").is_dir():
        return
    cmd = [sys.executable, "train.py", "--config", str(DEMO), "--resume", "auto", f"output_dir={run_dir}"]
    run([*cmd, *overrides], run_dir.with_suffix(".train.log"))


def threads_per_run(jobs: int) -> str:
    """The ``cpu_threads`` override that shares the machine's cores among ``jobs`` runs at a time (the demo
    alone takes 2; the run's figures do not depend on it, docs/results.md)."""
    return f"cpu_threads={max(1, (os.cpu_count() or 1) // jobs)}"


def warm_start(out: Path, seed: int, steps: int, lr: float, threads: str) -> None:
    """One seed's SFT run (``<out>/seed-<seed>/sft``), the start that every GRPO row of that seed shares."""
    overrides = [f"seed={seed}", "mode=sft", f"max_steps={steps}", f"optim.lr={lr}", threads]
    train(out / f"seed-{seed}" / "sft", overrides)


def evaluate(run_dir: Path, eval_dir: Path, no_adapter: bool = False) -> dict:
    """Greedy reports on the test split (one per study), scored against the true labels by evaluate.py;
    returns its truth-based CE micro- and macro-F1 over the 14 observations."""
    metrics_file = eval_dir / "metrics.json"
    if not metrics_file.is_file():
        cmd = [
            sys.executable,
            "evaluate.py",
            "--run",
            str(run_dir),
            "--split",
            "test",
            "--out",
            str(eval_dir),
        ]
        cmd += ["--no-nlg", "--no-plots", "--gen-batch-size", "40"]
        if no_adapter:
            cmd.append("--no-adapter")
        run(cmd, eval_dir.with_suffix(".eval.log"))
    ce = json.loads(metrics_file.read_text())["truth"]["ce"]["14"]
    return {"micro_f1": ce["micro"]["f1"], "macro_f1": ce["macro"]["f1"]}


def add_schedule_arguments(parser) -> None:
    """The options every bench of SFT + GRPO runs from the demo's recipe shares (this one, bench/toolkit.py)."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="a third of the SFT and GRPO steps")
    parser.add_argument("--grpo-steps", type=int, help="GRPO steps per row (default: the demo's max_steps)")
    parser.add_argument("--sft-steps", type=int, help="SFT steps per seed (default: the demo's sft.steps)")
    parser.add_argument("--sft-lr", type=float, help="SFT learning rate (default: the demo's sft.lr)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (the cores shared among them)")


def schedule(args) -> tuple[int, int, float]:
    """SFT steps, GRPO steps and SFT learning rate: the demo's, a third of the steps with --quick, or as given."""
    cfg = load_config(DEMO)
    sft_steps, grpo_steps = cfg.sft.steps, cfg.max_steps
    if args.quick:
        sft_steps, grpo_steps = max(1, sft_steps // 3), max(1, grpo_steps // 3)
    sft_steps, grpo_steps = args.sft_steps or sft_steps, args.grpo_steps or grpo_steps
    return sft_steps, grpo_steps, args.sft_lr or cfg.sft.lr or cfg.optim.lr


def after_sft(pool, seeds, sft, tasks) -> list:
    """Queue each seed's SFT first, then every task ``(seed, function, *args)``, which calls
    ``function(seed, *args)`` once that seed's SFT is done: a task starts as soon as its warm start exists and a
    worker is free, so no worker idles while the last SFT runs. No deadlock: every SFT is queued ahead of every
    task, so a task only ever waits on an SFT that has already started. Returns the tasks' futures, in order."""
    warm_starts = {seed: pool.submit(sft, seed) for seed in seeds}

    def after_its_sft(seed, function, *args):
        warm_starts[seed].result()
        return function(seed, *args)

    return [pool.submit(after_its_sft, *task) for task in tasks]


def table_tasks(seeds: list[int], start_row, grpo_row) -> list[tuple]:
    """The table's runs as ``after_sft`` tasks: the base once (it does not depend on the seed), then seed by
    seed its SFT row and its GRPO rows, so that a free worker takes the first seed's rows while the last
    seed's SFT still runs (with every SFT row queued first, the last one's evaluation held a worker idle for
    the length of that SFT, about 2 minutes)."""
    tasks = [(seeds[0], start_row, "base", True)]
    for seed in seeds:
        tasks += [(seed, start_row, "SFT", False), *((seed, grpo_row, name, w) for name, w in GRPO_ROWS)]
    return tasks


def prepare_demo_assets(out: Path) -> None:
    """The demo's assets (world, base model) once, before the parallel runs."""
    code = f"import train; from grpo.config import load_config; train.prepare_assets(load_config({str(DEMO)!r}), True)"
    run([sys.executable, "-c", code], out / "assets.log")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "table2")
    add_schedule_arguments(parser)
    args = parser.parse_args(argv)
    sft_steps, grpo_steps, sft_lr = schedule(args)
    out = args.out.resolve()
    start = time.time()
    prepare_demo_assets(out)

    threads = threads_per_run(args.jobs)

    def sft(seed: int) -> None:
        warm_start(out, seed, sft_steps, sft_lr, threads)

    def grpo_row(seed: int, name: str, weights: dict) -> tuple[str, Path, dict]:
        seed_dir = out / f"seed-{seed}"
        run_dir = seed_dir / slug(name)
        adapter = seed_dir / "sft" / "final_adapter"
        weights_text = "{" + ", ".join(f"{k}: {v}" for k, v in weights.items()) + "}"
        overrides = [f"seed={seed}", f"max_steps={grpo_steps}", f"model.init_adapter={adapter}", threads]
        train(run_dir, [*overrides, f"reward.weights={weights_text}"])
        eval_dir = seed_dir / f"eval-{slug(name)}"
        return (name, eval_dir, evaluate(run_dir, eval_dir))

    def start_row(seed: int, name: str, no_adapter: bool) -> tuple[str, Path, dict]:
        """The base (the SFT run's model without its adapter) or the SFT row, evaluated."""
        sft_dir = out / f"seed-{seed}" / "sft"
        eval_dir = out / f"seed-{seed}" / f"eval-{slug(name)}"
        return (name, eval_dir, evaluate(sft_dir, eval_dir, no_adapter))

    tasks = table_tasks(args.seeds, start_row, grpo_row)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        scores = [future.result() for future in after_sft(pool, args.seeds, sft, tasks)]

    rows = ["base", "SFT", *(name for name, _ in GRPO_ROWS)]
    table = summarise(rows, scores)
    elapsed = time.time() - start
    report = format_table(table, args, sft_steps, sft_lr, grpo_steps, elapsed)
    print(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table2.md").write_text(report + "\n", encoding="utf-8")
    runs = [{"row": name, "eval_dir": str(path), **score} for name, path, score in scores]
    (out / "table2.json").write_text(
        json.dumps(
            {
                "summary": table,
                "runs": runs,
                "seeds": args.seeds,
                "sft_steps": sft_steps,
                "sft_lr": sft_lr,
                "grpo_steps": grpo_steps,
                "quick": args.quick,
                "wall_s": elapsed,
            },
            indent=2,
        )
        + "\n"
    )
    plot(table, out / "table2.png")


def summarise(rows: list[str], scores: list[tuple[str, Path, dict]]) -> dict[str, dict]:
    table = {}
    for row in rows:
        values = [s for name, _, s in scores if name == row]
        table[row] = {"n": len(values)}
        for key in ("micro_f1", "macro_f1"):
            figures = np.array([v[key] for v in values]) * 100
            table[row][key] = {
                "mean": float(figures.mean()),
                "std": float(figures.std(ddof=1)) if len(figures) > 1 else 0.0,
                "values": [float(f) for f in figures],
            }
    return table


def ordering_holds(table: dict, order=PAPER_ORDER, key: str = "micro_f1") -> list[str]:
    """For each adjacent pair of the paper's ordering, whether it holds, is reversed, or is within spread."""
    verdicts = []
    for better, worse in zip(order[:-1], order[1:]):
        a, b = table[better][key], table[worse][key]
        gap, spread = a["mean"] - b["mean"], a["std"] + b["std"]
        verdict = "holds" if gap > spread else "reversed" if gap < -spread else "within the seeds' spread"
        verdicts.append(f"{better} > {worse}: {gap:+.2f} points (spread {spread:.2f}): {verdict}")
    return verdicts


def format_table(table: dict, args, sft_steps: int, sft_lr: float, grpo_steps: int, elapsed: float) -> str:
    lines = [
        f"Table II, synthetic world: greedy reports on the test split scored against the true labels "
        f"(14 observations, uncertain as negative); mean ± std over seeds {args.seeds}; "
        f"SFT {sft_steps} steps at lr {sft_lr:g}, GRPO {grpo_steps} steps{' (--quick)' if args.quick else ''}.",
        "",
        "| Method | CE micro-F1 (%) | CE macro-F1 (%) | runs |",
        "|---|---|---|---|",
    ]
    for row, figures in table.items():
        label = row if row in ("base", "SFT") else f"SFT + GRPO, {row}"
        micro, macro = figures["micro_f1"], figures["macro_f1"]
        lines.append(
            f"| {label} | {micro['mean']:.2f} ± {micro['std']:.2f} | {macro['mean']:.2f} ± "
            f"{macro['std']:.2f} | {figures['n']} |"
        )
    sft = table["SFT"]["micro_f1"]
    best = table["MCCS + format"]["micro_f1"]
    lines += [
        "",
        f"MCCS + format - SFT: {best['mean'] - sft['mean']:+.2f} points of micro-F1 "
        f"(2 x seed std of MCCS + format: {2 * best['std']:.2f}).",
    ]
    lines.append(
        "GRPO rows at least SFT's mean: "
        + ", ".join(
            f"{row} {'yes' if table[row]['micro_f1']['mean'] >= sft['mean'] else 'NO'}"
            for row, _ in GRPO_ROWS
        )
    )
    lines += ["", "The paper's ordering (MCCS + format > MCCS > CE-F1 > NLG > SFT), micro-F1:"]
    lines += [f"- {v}" for v in ordering_holds(table)]
    lines.append(f"\nwall time {elapsed / 60:.1f} min")
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None (with a note) where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install -e '.[plots]')")
        return None
    return plt


def f1_bars(ax, table: dict, title: str) -> None:
    """Micro- and macro-F1 per row (mean, std over seeds) as paired bars on ``ax``."""
    rows = list(table)
    x = np.arange(len(rows))
    for offset, key, label in ((-0.2, "micro_f1", "micro-F1"), (0.2, "macro_f1", "macro-F1")):
        means = [table[r][key]["mean"] for r in rows]
        stds = [table[r][key]["std"] for r in rows]
        ax.bar(x + offset, means, 0.4, yerr=stds, capsize=3, label=label)
    ax.set_xticks(x, rows, rotation=20, ha="right")
    ax.set_ylabel("CE F1 vs true labels (%)")
    ax.set_title(title)
    ax.legend()


def plot(table: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(9, 4))
    f1_bars(ax, table, "Table II in the synthetic world (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
