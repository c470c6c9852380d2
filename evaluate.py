"""Evaluate report generation: clinical efficacy (CE), polarity errors, format compliance, NLG.

Modes (exactly one):

  --predictions FILE.csv   score reports that already exist (this project's or any other model's)
      python evaluate.py --predictions preds.csv --out eval/mine
      [--references REFS.csv] [--id-column id --reference-column reference --prediction-column prediction]
      [--generated-column generated] [--extract-report] [--labeler rules|chexbert --chexbert chexbert.pth --tokenizer DIR]
      [--uncertain-as negative|positive] [--no-nlg | --no-meteor] [--no-plots] [--method NAME --dataset NAME]
      [--truth annotation.json]   # also score against the true labels (the synthetic world's), one report per study

  --compare DIR1 DIR2 ...  print the Table II-style comparison of evaluation folders, and each row's F1
      difference to the first with its paired bootstrap 95 % interval (against the true labels when known)
      python evaluate.py --compare eval/base eval/sft eval/grpo [--table-average macro] [--subset 14]
      [--bootstrap 1000 --seed 0]

  --paper-table DIR ...    the paper's Table I (Method, IU X-Ray P/R/F1, MIMIC-CXR P/R/F1) from evaluation folders
      python evaluate.py --paper-table eval/iu eval/mimic [--table-average macro] [--uncertain-as negative]

  --run RUNDIR --curves    draw a training run's curves from RUNDIR/metrics.jsonl to PNG
      python evaluate.py --run runs/demo --curves [--out DIR]

  --run RUNDIR             generate reports with the run's model on a split, then score them
      python evaluate.py --run runs/demo --split test [--checkpoint N | --no-adapter] [--sample] [--all-views]
      python evaluate.py --run runs/demo/sft --split test   # the demo's SFT stage (a run folder of its own)
      torchrun --nproc_per_node=8 evaluate.py --run-dir RUNDIR --split test   # ranks share the split

With the rule-based labeler nothing here loads torch or transformers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evaluation.ce import AVERAGES, UNCERTAIN_POLICIES
from model.engine import ENGINES  # the names only: no torch
from rewards.labeling import LABELER_NAMES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Score generated chest X-ray reports (CE metrics, polarity, NLG) or compare evaluations.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--predictions", type=Path, metavar="FILE.csv", help="score the reports in this CSV")
    mode.add_argument("--compare", nargs="+", type=Path, metavar="DIR", help="compare evaluation folders")
    mode.add_argument(
        "--paper-table", nargs="+", type=Path, metavar="DIR",
        help="print the paper's Table I columns from evaluation folders scored with --dataset iu_xray|mimic_cxr",
    )  # fmt: skip
    mode.add_argument(
        "--run", "--run-dir", dest="run", type=Path, metavar="RUNDIR",
        help="a training run folder (with --curves or to generate); under torchrun spell it --run-dir, "
        "since torchrun takes --run as an abbreviation of its own options",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (required with --predictions)")

    csv_group = parser.add_argument_group("predictions CSV")
    csv_group.add_argument(
        "--references", type=Path, metavar="REFS.csv", help="references in a separate CSV (same id column)"
    )
    csv_group.add_argument("--id-column", default="id")
    csv_group.add_argument("--reference-column", default="reference")
    csv_group.add_argument("--prediction-column", default="prediction")
    csv_group.add_argument(
        "--extract-report",
        action="store_true",
        help="the prediction column holds full outputs (<think>/<report>): label only the extracted report",
    )
    csv_group.add_argument(
        "--generated-column", default=None, help="column with the full model output (for format compliance)"
    )
    csv_group.add_argument(
        "--truth", type=Path, metavar="ANNOTATION.json",
        help="an annotation with true 'labels' (the synthetic world's): also score against them, one report "
        "per study (ids: entry ids, study ids or <entry id>/<view>; a study's first view is kept)",
    )  # fmt: skip

    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--labeler", choices=LABELER_NAMES, default="rules")
    scoring.add_argument(
        "--chexbert", type=Path, metavar="PATH", help="chexbert.pth (with --labeler chexbert)"
    )
    scoring.add_argument(
        "--tokenizer", type=Path, metavar="DIR", help="BERT tokenizer folder (with --labeler chexbert)"
    )
    scoring.add_argument("--device", default="cpu", help="device for the CheXbert labeler")
    scoring.add_argument("--batch-size", type=int, default=32, help="CheXbert labeling batch size")
    scoring.add_argument("--uncertain-as", choices=UNCERTAIN_POLICIES, default="negative")
    scoring.add_argument("--no-nlg", action="store_true", help="skip BLEU / ROUGE-L / CIDEr / METEOR")
    scoring.add_argument(
        "--no-meteor", action="store_true", help="skip METEOR (its java start-up takes seconds)"
    )
    scoring.add_argument("--no-plots", action="store_true", help="skip the PNG figures")

    extra = parser.add_argument_group(
        "optional metrics (pip install -e '.[metrics]'; local weights only, nothing is downloaded)"
    )
    extra.add_argument(
        "--bertscore", type=Path, metavar="DIR", help="BERTScore with this local encoder folder"
    )
    extra.add_argument("--bertscore-layers", type=int, metavar="N", help="encoder layer used (default: last)")
    extra.add_argument(
        "--radgraph", type=Path, metavar="DIR", help="RadGraph F1 with this extracted RadGraph model folder"
    )
    extra.add_argument(
        "--radgraph-bert",
        type=Path,
        metavar="DIR",
        help="local copy of the BERT model RadGraph's config names",
    )
    extra.add_argument(
        "--radgraph-model", default="radgraph", help="radgraph | radgraph-xl | modern-radgraph-xl"
    )
    scoring.add_argument("--method", help="row name in the tables (default: the output folder's name)")
    scoring.add_argument(
        "--dataset", help="dataset name for the table's column group (e.g. iu_xray, mimic_cxr)"
    )

    tables = parser.add_argument_group("tables")
    tables.add_argument(
        "--table-average", choices=AVERAGES, default="macro", help="average shown in summary.md / --compare"
    )
    tables.add_argument("--subset", choices=("14", "5"), default="14", help="label set shown by --compare")
    tables.add_argument(
        "--bootstrap", type=int, default=1000, metavar="N",
        help="--compare: resamples of the paired bootstrap (0: no difference table)",
    )  # fmt: skip
    tables.add_argument("--seed", type=int, default=0, help="--compare: seed of the bootstrap resampling")

    run_group = parser.add_argument_group("run")
    run_group.add_argument("--curves", action="store_true", help="with --run: draw training curves")
    run_group.add_argument(
        "--split", default="test", help="split of the run's annotation file to generate on"
    )
    run_group.add_argument(
        "--checkpoint", type=int, metavar="STEP", help="a checkpoint's adapter (default: final)"
    )
    run_group.add_argument("--no-adapter", action="store_true", help="evaluate the base model (no adapter)")
    run_group.add_argument(
        "--all-views", action="store_true",
        help="generate and score a report for every image (default: one per study, its first view)",
    )  # fmt: skip
    run_group.add_argument("--gen-batch-size", type=int, default=8, help="prompts per generate call")
    run_group.add_argument("--max-new-tokens", type=int, help="default: the run's sampling.max_new_tokens")
    run_group.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    run_group.add_argument("--temperature", type=float, default=1.0, help="with --sample")
    run_group.add_argument("--top-p", type=float, default=1.0, help="with --sample")
    run_group.add_argument("--engine", choices=ENGINES, help="rollout engine (default: the run's)")
    run_group.add_argument("--gen-device", default="auto", help="auto | cpu | cuda (the model's device)")
    return parser


def build_labeler(args: argparse.Namespace):
    """The labeler the arguments name (rewards.labeling imports torch only for CheXbert)."""
    from rewards.labeling import make_labeler

    return make_labeler(
        args.labeler,
        chexbert_path=args.chexbert,
        tokenizer_dir=args.tokenizer,
        device=args.device,
        batch_size=args.batch_size,
    )


def build_extra_scorers(args: argparse.Namespace) -> list:
    """BERTScore / RadGraph F1 scorers the options ask for; their packages and paths are checked here, before
    any generation or labeling, so a missing one stops the run at once."""
    from evaluation.field_metrics import BERTScore, RadGraphF1

    scorers = []
    if args.bertscore is not None:
        scorers.append(BERTScore(args.bertscore, args.bertscore_layers, device=args.device))
    if args.radgraph is not None:
        scorers.append(RadGraphF1(args.radgraph, args.radgraph_bert, args.radgraph_model, device=args.device))
    return scorers


def score_with_args(
    args, ids, references, predictions, generated, out_dir, method, settings, truth=None
) -> dict:
    """evaluation.score_reports with the scoring options of the command line (both ways in use it)."""
    from evaluation.score import score_reports

    return score_reports(
        ids, references, predictions, generated, labeler=build_labeler(args), out_dir=out_dir,
        uncertain_as=args.uncertain_as, nlg=not args.no_nlg, meteor=False if args.no_meteor else "auto",
        plots=not args.no_plots, labeler_name=args.labeler, method=method, dataset=args.dataset,
        table_average=args.table_average, settings=settings, truth_codes=truth,
        extra_scorers=args.extra_scorers,
    )  # fmt: skip


def run_predictions_mode(args: argparse.Namespace) -> int:
    from evaluation.inputs import align_by_id, read_columns

    if args.out is None:
        raise SystemExit("error: --predictions needs --out DIR")
    if args.references is None:
        columns = [args.reference_column, args.prediction_column]
    else:
        columns = [args.prediction_column]
    if args.generated_column:
        columns.append(args.generated_column)
    tables = read_columns(args.predictions, args.id_column, columns)
    references = (
        read_columns(args.references, args.id_column, [args.reference_column])[args.reference_column]
        if args.references
        else tables[args.reference_column]
    )
    ids, reference_texts, prediction_texts = align_by_id(tables[args.prediction_column], references)
    generated = tables[args.generated_column].texts if args.generated_column else None
    if args.extract_report:
        # The prediction column holds full model outputs: keep them, and label only the <report> part.
        from rewards.format import extract_report

        generated = generated if generated is not None else prediction_texts
        prediction_texts = [extract_report(text) for text in prediction_texts]
    truth = None
    if args.truth is not None:
        from evaluation.truth import match_truth, read_truth

        kept, truth = match_truth(ids, read_truth(args.truth), str(args.predictions))
        if len(kept) < len(ids):
            print(f"scoring one report per study: {len(kept)} of {len(ids)} rows (each study's first view)")
        ids, reference_texts, prediction_texts = (
            [x[i] for i in kept] for x in (ids, reference_texts, prediction_texts)
        )
        generated = [generated[i] for i in kept] if generated is not None else None

    metrics = score_with_args(
        args, ids, reference_texts, prediction_texts, generated, args.out, args.method,
        settings={
            "mode": "predictions",
            "extract_report": args.extract_report,
            "predictions_file": str(args.predictions),
            "references_file": str(args.references or args.predictions),
            "chexbert": str(args.chexbert) if args.chexbert else None,
            "truth_file": str(args.truth) if args.truth else None,
        },
        truth=truth,
    )  # fmt: skip
    print_headline(metrics, args.table_average)
    print(
        f"\nwrote {args.out}/: metrics.json labels.csv reports.csv summary.md {' '.join(metrics.get('plots', []))}"
    )
    return 0


def print_headline(metrics: dict, table_average: str) -> None:
    from evaluation.outputs import headline_markdown
    from evaluation.truth import truth_markdown

    print(headline_markdown(metrics, table_average))
    if "truth" in metrics:
        print(truth_markdown(metrics))


def run_compare_mode(args: argparse.Namespace) -> int:
    from evaluation.bootstrap import difference_markdown
    from evaluation.outputs import compare_markdown

    table = compare_markdown(args.compare, average=args.table_average, subset=args.subset)
    print(table)
    if args.bootstrap > 0:
        differences = difference_markdown(
            args.compare, subset=args.subset, n_resamples=args.bootstrap, seed=args.seed
        )
        print(differences)
        table += "\n" + differences
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.md").write_text(table, encoding="utf-8")
    return 0


def run_paper_table_mode(args: argparse.Namespace) -> int:
    from evaluation.ce_table import paper_table_markdown

    table = paper_table_markdown(args.paper_table, average=args.table_average, uncertain_as=args.uncertain_as)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "paper_table.md").write_text(table, encoding="utf-8")
    return 0


def run_curves_mode(args: argparse.Namespace) -> int:
    from evaluation.plots import PlotsUnavailable, plot_training_curves

    try:
        path = plot_training_curves(args.run / "metrics.jsonl", args.out or args.run)
    except PlotsUnavailable as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {path}")
    return 0


def default_method(args: argparse.Namespace, which: str) -> str:
    """Row name: Base, or the run's stage (SFT for the demo's sft/ folder, else GRPO) and adapter."""
    from grpo.run_dir import read_run_config

    if args.no_adapter:
        return "Base"
    return f"{'SFT' if read_run_config(args.run).mode == 'sft' else 'GRPO'} ({which})"


def run_generation_mode(args: argparse.Namespace) -> int:
    """Generate a report per sample of a split with the run's model (greedy by default), extract the
    <report> text, and score it like --predictions. Resumable; under torchrun, ranks share the split."""
    from evaluation.generate import Decoding, generate_split
    from rewards.format import extract_report

    which = (
        "base" if args.no_adapter else f"step-{args.checkpoint}" if args.checkpoint is not None else "final"
    )
    out = args.out or args.run / f"eval-{args.split}-{which}"
    decoding = Decoding(
        args.max_new_tokens, args.sample, args.temperature, args.top_p, args.gen_batch_size, args.engine
    )
    rows = generate_split(
        args.run, args.split, out, args.checkpoint, args.no_adapter, decoding, args.gen_device,
        per_study=not args.all_views,
    )  # fmt: skip
    if not rows:  # a non-zero rank under torchrun: rank 0 scores
        return 0
    generated = [row["generated"] for row in rows]
    import numpy as np

    known = all(row["labels"] is not None for row in rows)
    # Against the truth only when each report is its own study's (with --all-views a study would count twice).
    truth = [row["labels"] for row in rows] if known and not args.all_views else None
    metrics = score_with_args(
        args, [row["id"] for row in rows], [row["reference"] for row in rows],
        [extract_report(t) for t in generated], generated, out, args.method or default_method(args, which),
        settings={"mode": "generation", "run": str(args.run), "split": args.split, "adapter": which,
                  "decoding": vars(decoding), "per_study": not args.all_views},
        truth=None if truth is None else np.array(truth),
    )  # fmt: skip
    print_headline(metrics, args.table_average)
    print(f"\nwrote {out}/: generations.jsonl metrics.json labels.csv reports.csv summary.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.curves and args.run is None:
        parser.error("--curves needs --run RUNDIR")
    try:
        args.extra_scorers = build_extra_scorers(args)
        if args.predictions is not None:
            return run_predictions_mode(args)
        if args.compare is not None:
            return run_compare_mode(args)
        if args.paper_table is not None:
            return run_paper_table_mode(args)
        if args.curves:
            return run_curves_mode(args)
        return run_generation_mode(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
