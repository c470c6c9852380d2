"""The format reward (paper section III.B.1) and the extraction of the report that gets labeled.

The expected completion is ``<think>REASONING</think>`` followed by ``<report>REPORT</report>``. Tags are
matched exactly (lower case, no attributes). ``format_reward`` scores structure only:

- **1.0** (full compliance): each of the four tags occurs exactly once, in the order ``<think>``,
  ``</think>``, ``<report>``, ``</report>``; the reasoning and the report are both non-empty (after
  stripping whitespace); nothing but whitespace lies before ``<think>``, between ``</think>`` and
  ``<report>``, or after ``</report>``.
- **0.5** (minor violations): the four tags occur exactly once each, in that order, and the report is
  non-empty, but the reasoning is empty and/or there is non-whitespace text outside the two blocks
  (before ``<think>``, between the blocks, or after ``</report>``).
- **0.0** otherwise: a tag is missing or repeated, the tags are out of order or nested, or the report
  block is empty.

``extract_report`` returns the text that is labeled and evaluated:

1. Reasoning is never part of the report: when ``</think>`` occurs, only the text after its last
   occurrence is considered; otherwise, when an unclosed ``<think>`` occurs, only the text before it.
2. In that text, if ``<report>`` occurs, the report is what follows its first occurrence, up to the next
   ``</report>`` or, for a truncated generation, the end of the text.
3. Fallback with no ``<report>`` tag: the whole considered text (so plain reports from models that do not
   use the tags, e.g. baselines, are evaluated as written).

Any leftover tag is removed and the result is stripped; it may be empty.
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
REPORT_OPEN, REPORT_CLOSE = "<report>", "</report>"
TAGS = (THINK_OPEN, THINK_CLOSE, REPORT_OPEN, REPORT_CLOSE)

FULL_CREDIT = 1.0
PARTIAL_CREDIT = 0.5
NO_CREDIT = 0.0

_ANY_TAG = re.compile("|".join(re.escape(tag) for tag in TAGS))


def format_reward(text: str) -> float:
    """Score the ``<think>...</think><report>...</report>`` structure: 1.0, 0.5 or 0.0 (module docstring)."""
    if any(text.count(tag) != 1 for tag in TAGS):
        return NO_CREDIT
    positions = [text.index(tag) for tag in TAGS]
    if positions != sorted(positions):
        return NO_CREDIT
    think_open, think_close, report_open, report_close = positions
    reasoning = text[think_open + len(THINK_OPEN) : think_close]
    report = text[report_open + len(REPORT_OPEN) : report_close]
    if not report.strip():
        return NO_CREDIT
    outside = text[:think_open] + text[think_close + len(THINK_CLOSE) : report_open]
    outside += text[report_close + len(REPORT_CLOSE) :]
    if reasoning.strip() and not outside.strip():
        return FULL_CREDIT
    return PARTIAL_CREDIT


def extract_report(text: str) -> str:
    """The report text of a completion (what gets labeled and scored); rules in the module docstring."""
    if THINK_CLOSE in text:
        text = text[text.rindex(THINK_CLOSE) + len(THINK_CLOSE) :]
    elif THINK_OPEN in text:
        text = text[: text.index(THINK_OPEN)]
    if REPORT_OPEN in text:
        text = text[text.index(REPORT_OPEN) + len(REPORT_OPEN) :]
        if REPORT_CLOSE in text:
            text = text[: text.index(REPORT_CLOSE)]
    return _ANY_TAG.sub(" ", text).strip()
