"""The GRPO toolkit, measured in the synthetic world: which plug-in moves the demo past its plateau?

For each seed: one SFT run (the demo's warm start, the same as bench/table2.py's), then GRPO from that SFT
adapter with the demo's recipe (configs/demo.yaml) and with each plug-in of issue 21 switched on alone, plus
one combination. Nothing else differs between rows and nothing is tuned per row. Each model writes greedy
reports for the test split, scored against the studies' TRUE labels (CE micro- and macro-F1 over the 14
observations, uncertain as negative), as in bench/table2.py.

    python bench/toolkit.py                     # 7 rows x 3 seeds, the demo's step counts
    python bench/toolkit.py --quick             # a third of the steps: a rough table
    python bench/toolkit.py --rows demo rloo    # some rows only
    python bench/toolkit.py --out runs/table2   # share the SFT runs and the demo row with bench/table2.py

Per row: mean ± std over seeds of micro- and macro-F1, the share of groups with no reward spread (among the
groups sampled, and among those trained on: they differ only under dynamic sampling), the extra sampling
rounds per step, and the GRPO wall time per run (the sum of its logged step times). Writes
``<out>/toolkit.json``, ``<out>/toolkit.md`` and ``<out>/toolkit.png``. Finished runs are reused when the
command is run again (delete ``<out>`` to start over).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from table2 import (  # noqa: E402
    ROOT,
    add_schedule_arguments,
    after_sft,
    evaluate,
    f1_bars,
    prepare_demo_assets,
    pyplot,
    schedule,
    slug,
    threads_per_run,
    train,
    warm_start,
)

# (row, GRPO overrides on top of the demo recipe). The demo row is bench/table2.py's "MCCS + format" (the same
# weights, which are the demo's), run in the same folder, so the two benches can share it.
ROWS: tuple[tuple[str, list[str]], ...] = (
    ("demo", []),
    ("no_std", ["grpo.advantage=no_std"]),
    ("rloo", ["grpo.advantage=rloo"]),
    ("per_term", ["reward.normalize=per_term"]),
    ("dynamic", ["grpo.dynamic_sampling=true"]),
    ("tis_cap=2", ["grpo.tis_cap=2"]),
    ("rloo + dynamic", ["grpo.advantage=rloo", "grpo.dynamic_sampling=true"]),
)
DEMO_WEIGHTS = "reward.weights={mccs: 0.75, format: 0.25}"  # as bench/table2.py passes them


def run_folder(row: str) -> str:
    return "mccs_format" if row == "demo" else "toolkit_" + slug(row).replace("=", "")


def run_figures(run_dir: Path) -> dict:
    """What the GRPO run logged, over its steps: the zero-spread share of the groups sampled and of those
    trained on, the extra rounds of dynamic sampling per step, and the wall time of its steps."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = float(np.mean([r["frac_zero_std_groups"] for r in rows]))
    sampled = trained
    if "dynamic/sampled_groups" in rows[0]:
        zero = sum(r["dynamic/filtered_groups"] + r["dynamic/refilled_groups"] for r in rows)
        sampled = zero / max(sum(r["dynamic/sampled_groups"] for r in rows), 1.0)
    return {
        "zero_std_sampled": sampled,
        "zero_std_trained": trained,
        "rounds_per_step": float(np.mean([r.get("dynamic/resample_rounds", 0.0) for r in rows])),
        "wall_s": float(sum(r["step_time_s"] for r in rows)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "toolkit")
    parser.add_argument("--rows", nargs="+", choices=[name for name, _ in ROWS], help="default: all rows")
    add_schedule_arguments(parser)
    args = parser.parse_args(argv)
    sft_steps, grpo_steps, sft_lr = schedule(args)
    rows = [(name, extra) for name, extra in ROWS if not args.rows or name in args.rows]
    out = args.out.resolve()
    start = time.time()
    prepare_demo_assets(out)

    threads = threads_per_run(args.jobs)

    def sft(seed: int) -> None:
        warm_start(out, seed, sft_steps, sft_lr, threads)

    def grpo_row(seed: int, name: str, extra: list[str]) -> dict:
        seed_dir = out / f"seed-{seed}"
        run_dir = seed_dir / run_folder(name)
        adapter = seed_dir / "sft" / "final_adapter"
        overrides = [
            f"seed={seed}",
            f"max_steps={grpo_steps}",
            f"model.init_adapter={adapter}",
            DEMO_WEIGHTS,
            threads,
        ]
        train(run_dir, overrides + extra)
        scores = evaluate(run_dir, seed_dir / f"eval-{run_folder(name)}")
        return {"row": name, "seed": seed, "run_dir": str(run_dir), **scores, **run_figures(run_dir)}

    tasks = [(seed, grpo_row, name, extra) for seed in args.seeds for name, extra in rows]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = [future.result() for future in after_sft(pool, args.seeds, sft, tasks)]

    table = summarise([name for name, _ in rows], runs)
    elapsed = time.time() - start
    report = format_table(table, args, sft_steps, grpo_steps, elapsed)
    print(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "toolkit.md").write_text(report + "\n", encoding="utf-8")
    summary = {
        "summary": table,
        "runs": runs,
        "rows": {name: extra for name, extra in rows},
        "seeds": args.seeds,
        "sft_steps": sft_steps,
        "grpo_steps": grpo_steps,
        "quick": args.quick,
        "wall_s": elapsed,
    }
    (out / "toolkit.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(table, out / "toolkit.png")


def summarise(rows: list[str], runs: list[dict]) -> dict[str, dict]:
    """Per row: mean, std (ddof 1) and values over seeds of each figure (F1s in %)."""
    table = {}
    for row in rows:
        mine = [r for r in runs if r["row"] == row]
        table[row] = {"n": len(mine)}
        for key in (
            "micro_f1",
            "macro_f1",
            "zero_std_sampled",
            "zero_std_trained",
            "rounds_per_step",
            "wall_s",
        ):
            values = np.array([r[key] for r in mine], dtype=float) * (100 if key.endswith("_f1") else 1)
            table[row][key] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "values": [float(v) for v in values],
            }
    return table


def versus_demo(table: dict, row: str, key: str = "micro_f1") -> str:
    """The row's gap to the demo row, and whether it is beyond the seeds' spread."""
    if row == "demo" or "demo" not in table:
        return ""
    a, b = table[row][key], table["demo"][key]
    gap, spread = a["mean"] - b["mean"], a["std"] + b["std"]
    verdict = "better" if gap > spread else "worse" if gap < -spread else "within spread"
    return f"{gap:+.2f} ({verdict})"


def format_table(table: dict, args, sft_steps: int, grpo_steps: int, elapsed: float) -> str:
    lines = [
        f"GRPO toolkit, synthetic world: greedy reports on the test split scored against the true labels "
        f"(14 observations, uncertain as negative); mean ± std over seeds {args.seeds}; the same SFT start "
        f"per seed ({sft_steps} steps), GRPO {grpo_steps} steps{' (--quick)' if args.quick else ''}.",
        "",
        "| Row | CE micro-F1 (%) | vs demo | CE macro-F1 (%) | zero-spread groups, sampled / trained "
        "| extra rounds / step | GRPO wall per run (s) | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, f in table.items():
        lines.append(
            f"| {row} | {f['micro_f1']['mean']:.2f} ± {f['micro_f1']['std']:.2f} | {versus_demo(table, row)} "
            f"| {f['macro_f1']['mean']:.2f} ± {f['macro_f1']['std']:.2f} "
            f"| {f['zero_std_sampled']['mean']:.3f} / {f['zero_std_trained']['mean']:.3f} "
            f"| {f['rounds_per_step']['mean']:.2f} | {f['wall_s']['mean']:.0f} ± {f['wall_s']['std']:.0f} | {f['n']} |"
        )
    lines.append(f"\nwall time {elapsed / 60:.1f} min")
    return "\n".join(lines)


def plot(table: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    rows = list(table)
    fig, (f1_ax, zero_ax) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
    f1_bars(f1_ax, table, "GRPO toolkit from the same SFT start (mean ± std over seeds)")
    x = np.arange(len(rows))
    for offset, key, label in (
        (-0.2, "zero_std_sampled", "sampled"),
        (0.2, "zero_std_trained", "trained on"),
    ):
        zero_ax.bar(x + offset, [table[r][key]["mean"] for r in rows], 0.4, label=label)
    zero_ax.set_xticks(x, rows, rotation=20, ha="right")
    zero_ax.set_ylim(0, 1)
    zero_ax.set_ylabel("share of groups with no reward spread")
    zero_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
