"""Evaluation: clinical-efficacy (CE) metrics, polarity analysis, output files, tables and plots.

``score_reports`` (evaluation.score) is the one entry both modes of ``evaluate.py`` call. It writes:

metrics.json
    ``method``, ``dataset``, ``n_reports``, ``labeler``, ``uncertain_as`` ("negative" | "positive");
    ``ce -> "14" | "5" -> "micro" | "macro" | "example" -> "precision" | "recall" | "f1"`` (fractions);
    ``ce_field -> by_convention -> "negative" | "positive" -> (the ``ce`` layout)`` and ``ce_field -> figures``:
    micro-F1 / macro-F1 over 14 and micro-F1 over 5 under both conventions, each record naming its
    ``labeler`` and ``uncertain_as`` (evaluation.ce_table);
    ``per_label -> <observation> -> precision, recall, f1, support, predicted``;
    ``polarity -> <observation> | "total" -> both_blank, agree, reversal_pos_to_neg, reversal_neg_to_pos,
    uncertainty_mismatch, omission, unsupported`` (a partition of the report-label pairs) plus the
    sub-counts ``reversals``, ``omitted_positive``, ``unsupported_positive``;
    ``format_compliance -> rate, mean_reward, n`` (when full generated texts are given);
    ``nlg -> BLEU_1..4, ROUGE_L, CIDEr[, METEOR]`` or ``nlg_unavailable`` (why not);
    ``bertscore -> precision, recall, f1, model, num_layers`` and ``radgraph -> f1_simple, f1_partial,
    f1_complete, model`` when asked for (evaluation.field_metrics; off by default);
    ``plots`` (PNG names) or ``plots_unavailable``; ``settings`` (everything the figures depend on);
    ``truth`` (when the true labels are known, e.g. the synthetic world): ``ce`` and ``per_label`` against
    them in the layout above, and ``references_ce``: the reference reports' labels against them.
    The top-level ``ce`` / ``per_label`` / ``polarity`` are always against the reference reports.
labels.csv, reports.csv, summary.md, per_label_f1.png, polarity_errors.png
    see evaluation.outputs and evaluation.plots.
truth.csv
    the true labels of each scored study (evaluation.truth), when known.

``evaluation.bootstrap`` gives the paired bootstrap interval of a difference in CE-F1 between two models
(``paired_bootstrap`` on label arrays, ``compare_folders`` on two evaluation folders).

Only numpy is needed; torch is loaded only by a labeler or model that needs it.
"""

from evaluation.ce import ce_metrics, polarity_analysis
from evaluation.score import score_reports

__all__ = ["ce_metrics", "polarity_analysis", "score_reports"]
