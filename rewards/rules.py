"""A rule-based CheXpert-style labeler: report text -> 14 observation codes, no weights needed.

Pipeline (the CheXpert labeler's shape, Irvin et al. 2019, with a scoped-cue classifier in place of its
dependency parse; the phrase lists live in ``rewards.phrases``):

1. Clean: lower-case, de-identification tokens, numbered lists, "and/or", slashes, abbreviations,
   missing spaces after punctuation; cap the length.
2. Split into clauses: sentence ends, ";" and clause words ("but", "however", "which", ", the" ...).
3. Find mentions per observation, dropping those inside an "unmention" ("pericardial effusion").
4. Classify each mention from the cues of its clause, in this order: uncertainty phrased as negation
   ("cannot exclude X", "X not excluded") -> uncertain; negation -> negative; other uncertainty -> uncertain;
   otherwise positive. A cue reaches the mentions within its window on its side, and beyond that along a
   coordinated list ("no effusion, pneumothorax, or consolidation"); a finite verb, a restart after a comma
   ("no pneumothorax, small effusion") or an opposite cue ends its reach.
5. Aggregate per observation: positive > uncertain > negative > blank. A positive or uncertain heart failure
   makes a blank Cardiomegaly uncertain. No Finding is positive only when no finding other than Support
   Devices is positive or uncertain, no other abnormality (emphysema, hernia ...) is asserted, and the text
   says something normal; otherwise blank.

These labels feed the clinical reward: the signed vectors of eq. (3)-(4) and the MCCS of eq. (5)-(6).
"""

from __future__ import annotations

import itertools
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rewards import phrases
from rewards.vocabulary import (
    BLANK,
    CODE_NAMES,
    NEGATIVE,
    NO_FINDING,
    NUM_OBSERVATIONS,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
)

# Reports are a few hundred characters; the cap bounds the cost of a degenerate generation (the labeler's
# time is linear in the length: bench/labeler_length.py).
MAX_CHARS = 50_000
# A cue reaches along a coordinated list ("no effusion, pneumothorax, or edema") at most this many mentions
# beyond its own window: real lists are short, and an unbounded walk makes a degenerate text quadratic.
MAX_LIST_REACH = 16
# Mentions joined by "or" are a few words from it: only those starting this close are looked at.
_OR_WINDOW = 400

BLOCKER = "<other abnormality>"  # pseudo-observation: findings outside the 13 that block No Finding
ALTERNATIVE = "<alternative>"  # pseudo-observation: non-findings that pair with "or" / "versus"

_PRIORITY = {BLANK: 0, NEGATIVE: 1, UNCERTAIN: 2, POSITIVE: 3}  # aggregation order
_OBS_INDEX = {name: i for i, name in enumerate(OBSERVATIONS)}
_SUPPORT_DEVICES = _OBS_INDEX["Support Devices"]
_CARDIOMEGALY = _OBS_INDEX["Cardiomegaly"]


# ----------------------------------------------------------------------------------------------
# Phrase compilation (once, at import)
# ----------------------------------------------------------------------------------------------


def phrase_regex(phrase: str) -> str:
    """One phrase of ``rewards.phrases`` (see its syntax) -> a regular expression without capture groups."""
    if phrase.startswith("re:"):
        raw = phrase[3:]
        return raw if raw[:1] in (",", ";") else r"\b" + raw
    words = phrase.split(" ")
    parts = [re.escape(w[:-1]) + r"\w*" if w.endswith("*") else re.escape(w) for w in words]
    return r"\b" + r"[\s-]+".join(parts) + ("" if phrase.endswith("*") else r"\b")


def _literal_key(phrase: str) -> str:
    """The first two letters a phrase's text must start with ('' for raw or too-short phrases)."""
    if phrase.startswith("re:"):
        return ""
    head = phrase.split(" ")[0].rstrip("*")
    return head[:2] if len(head) >= 2 else ""


class PhraseSet:
    """Tagged phrases matched only at word starts, dispatched on a word's first two letters.

    One big alternation tried at every character is the slow path of a regex labeler; here each word
    start tries only the phrases that can begin with its letters (longest first, so the most specific
    phrase wins), and the few raw patterns run as one small regex. Matches never overlap, as with
    ``re.finditer``: at equal starts the longer match wins.
    """

    def __init__(self, items: Iterable[tuple[str, object]]) -> None:
        ordered = sorted(set(items), key=lambda item: (-len(item[0]), item[0]))
        self._by_key: dict[str, list[tuple[str, object]]] = {}
        raw = []
        for phrase, tag in ordered:
            key = _literal_key(phrase)
            if key:
                self._by_key.setdefault(key, []).append((phrase, tag))
            else:
                raw.append((phrase, tag))
        self.keys = frozenset(self._by_key)
        self._compiled = {k: self._compile(v) for k, v in self._by_key.items()}
        self._raw = self._compile(raw) if raw else None

    @staticmethod
    def _compile(items: list[tuple[str, object]]) -> tuple[re.Pattern[str], list[object]]:
        regex = "|".join(f"({phrase_regex(p)})" for p, _ in items)
        return re.compile(regex), [tag for _, tag in items]

    def finditer(
        self, text: str, words: list[tuple[int, str]], text_keys: set[str], overlapping: bool = False
    ) -> list[tuple[int, int, object]]:
        """(start, end, tag) matches, non-overlapping unless asked; ``words`` = (start, first two letters)."""
        found = []
        if not self.keys.isdisjoint(text_keys):
            limit = 0
            for start, key in words:
                if start < limit:
                    continue
                compiled = self._compiled.get(key)
                if compiled is None:
                    continue
                m = compiled[0].match(text, start)
                if m:
                    found.append((start, m.end(), compiled[1][m.lastindex - 1]))
                    limit = start if overlapping else m.end()
        if self._raw is not None:
            raw = [(m.start(), m.end(), self._raw[1][m.lastindex - 1]) for m in self._raw[0].finditer(text)]
            if raw:
                found = found + raw if overlapping else _leftmost_longest(found + raw)
        return found


def _leftmost_longest(spans: list[tuple[int, int, object]]) -> list[tuple[int, int, object]]:
    kept = []
    limit = -1
    for span in sorted(spans, key=lambda x: (x[0], -x[1])):
        if span[0] >= limit:
            kept.append(span)
            limit = span[1]
    return kept


def _word_index(text: str) -> tuple[list[tuple[int, str]], set[str]]:
    words = [(m.start(), m.group()[:2]) for m in _WORD.finditer(text)]
    return words, {k for _, k in words}


def _plain_alternation(items: Iterable[str]) -> re.Pattern[str]:
    ordered = sorted(set(items), key=lambda p: (-len(p), p))
    return re.compile("|".join(f"(?:{phrase_regex(p)})" for p in ordered))


@dataclass(frozen=True)
class CueRule:
    """How a cue category acts: its family, and how many words it reaches before / after itself."""

    family: str  # "neg_unc" | "neg" | "unc" | "hedge" (attribute mentions only) | "none"
    forward: int  # words it reaches after itself (0: none)
    backward: int  # words it reaches before itself (0: none)
    strict_forward: bool = False  # coordination needs "and"/"or" (short-reach cues)
    noun_phrase: bool = False  # forward reach ends at "with" / "due to" ... (as negation's does)
    loose_backward: bool = False  # backward reach crosses commas, lists and verbs (within its window)
    spares: frozenset[str] = frozenset()  # observations its forward reach leaves alone


CUE_RULES: dict[str, CueRule] = {
    "pseudo": CueRule("none", 0, 0),
    "neg_unc_pre": CueRule("neg_unc", 8, 0),
    "neg_unc_post": CueRule("neg_unc", 0, 6),
    "neg_pre": CueRule("neg", 8, 0),
    "neg_both_short": CueRule("neg", 2, 5, strict_forward=True),
    "neg_post": CueRule("neg", 0, 5),
    # A device after "may / likely / obscured by" is the cause or the subject of a doubtful position
    # ("obscured by the overlying pacemaker", "the line likely terminates in"), never itself in doubt.
    "unc_pre": CueRule("unc", 6, 0, spares=frozenset({"Support Devices"})),
    "unc_adj": CueRule("unc", 6, 0, noun_phrase=True),
    "unc_spurious": CueRule("unc", 6, 10, loose_backward=True, spares=frozenset({"Support Devices"})),
    "unc_post": CueRule("unc", 0, 5),
    "unc_both": CueRule("unc", 4, 4, strict_forward=True),
    "hedge_attr": CueRule("hedge", 3, 5, strict_forward=True),
}
if set(CUE_RULES) != set(phrases.CUES):
    raise RuntimeError(f"cue categories differ: rules {sorted(CUE_RULES)} vs phrases {sorted(phrases.CUES)}")

# Which cue families end the reach of a cue of a given family when they stand in between.
_BLOCKED_BY = {
    "neg": {"neg_unc"},
    "neg_unc": {"neg"},
    "unc": {"neg", "neg_unc"},
    "hedge": {"neg", "neg_unc"},
    "none": set(),
}


def _mention_sets() -> dict[str, tuple[PhraseSet, PhraseSet | None]]:
    table = {}
    for name in OBSERVATIONS[:NO_FINDING]:
        items = [(p, "plain") for p in phrases.PLAIN_MENTIONS.get(name, ())]
        items += [(p, "hedged") for p in phrases.HEDGED_MENTIONS.get(name, ())]
        items += [(p, "attribute") for p in phrases.ATTRIBUTE_MENTIONS.get(name, ())]
        unmentions = phrases.UNMENTIONS.get(name, ())
        table[name] = (PhraseSet(items), PhraseSet((u, None) for u in unmentions) if unmentions else None)
    for name, words in ((BLOCKER, phrases.NO_FINDING_BLOCKERS), (ALTERNATIVE, phrases.ALTERNATIVE_TERMS)):
        table[name] = (PhraseSet((p, "plain") for p in words), None)
    return table


_WORD = re.compile(r"\w+")
_MENTIONS = _mention_sets()
_CUES = PhraseSet((p, cat) for cat, ps in phrases.CUES.items() for p in ps)
_NORMAL_STATEMENT = PhraseSet((p, None) for p in phrases.NORMAL_STATEMENTS)
_ENLARGED = {name: _plain_alternation(ds) for name, ds in phrases.ENLARGED_DESCRIPTORS.items()}
_CHF = _plain_alternation(phrases.CHF_PHRASES)
_CLAUSE_BREAK = re.compile(r"[.!?;]|" + _plain_alternation(phrases.CLAUSE_BREAKS).pattern)
# "previously seen", "recently placed": a participle after one of these adverbs is not a new statement.
_GAP_VERB = re.compile(
    "".join(rf"(?<!\b{a} )" for a in phrases.PARTICIPLE_ADVERBS)
    + f"(?:{_plain_alternation(phrases.GAP_VERBS).pattern})"
)
_NEG_BREAK = _plain_alternation(phrases.NEGATION_BREAKS)
_RESTART = re.compile(r",\s*(?:and\s+)?(?:" + _plain_alternation(phrases.RESTART_MODIFIERS).pattern + ")")
_AND_OR = re.compile(r"\b(?:and|or|nor|as well as|along with)\b")
_SEPARATOR = re.compile(r",|\b(?:and|or|nor|as well as|along with)\b")
# A backward cue does not jump over a list or a "with": "cardiomegaly and normal lung vascularity".
_BACKWARD_STOP = re.compile(r",|\b(?:and|or|nor|with|without|versus)\b")
_OR = re.compile(r"\bor\b")
# Words a backward cue may have between itself and its subject: "heart size IS normal", "HAS BEEN removed".
_COPULA_TAIL = re.compile(
    r"(?:\b(?:is|are|was|were|has|have|had|be|been|being|remains?|remained|appears?|appeared|seems?|looks?|"
    r"now|again|otherwise|also|still|essentially|completely|entirely|largely|overall|totally|since|"
    r"interval|intervally|subsequently|fully|both|all|each|each of which)\s*)+$"
)

# ----------------------------------------------------------------------------------------------
# Cleaning
# ----------------------------------------------------------------------------------------------

_SENTENCE_STARTERS = (
    "No|There|The|Heart|Lungs?|Mild|Moderate|Severe|Small|Large|Stable|Unchanged|Interval|Possible|"
    "Likely|Probable|Cardiomegaly|Bilateral|Left|Right|Again|Persistent|New|Increased|Decreased|Otherwise|"
    "Low|Negative|Normal|Clear|Findings|Impression|Redemonstrated|Minimal|Moderately|Mildly|Trace|Tip"
)
_CLEAN_STEPS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, flags), r)
    for p, r, flags in (
        # Before lower-casing: a capitalised sentence start after a lower-case word marks a missing period.
        (rf"(?<=[a-z0-9%)])[ \t]+(?=(?:{_SENTENCE_STARTERS})\b)", ". ", 0),
        (r"\n[ \t]*\n|\n(?=[ \t]*(?:\d{1,2}[.)]|[-*\u2022]\s))", ". ", 0),
    )
)
_LOWER_STEPS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"\bx-?xxxx\b", "x-ray"),
        (r"\bx{3,}\b", "xxxx"),
        (r"\bw/o\b", " without "),
        (r"\bcan[\u2019']?t\b", "cannot"),
        (r"\bw/(?=\s|[a-z])", " with "),
        (r"\bs/p\b", " status post "),
        (r"\br/o\b", " rule out "),
        (r"\band\s*/\s*or\b", " or "),
        (r"\bvs\b\.?", " versus "),
        (r"\b(e\.g|i\.e|approx|dr|no)\.(?=\s*\d)", r"\1 "),  # "no. 2" style numbering
        (r"\b(?:e\.g|i\.e)\.", " "),
        (r"(?<=[a-z])\s*/\s*(?=[a-z])", " or "),
        (r"(?:(?<=\s)|(?<=^)|(?<=[.:;,]))\(?\d{1,2}[.)](?!\d)", ". "),  # numbered list items
        (r"[\u2022\u25cf*]+", ". "),
        (r"\s+-\s+(?=[a-z])", ". "),  # "- item" bullets
        (r"\.(?:\s*\.)+", "."),
        (r"(?<=[.,;:!?])(?=[a-z])", " "),
        (r"\s+", " "),
    )
)


def clean_report(text: str) -> str:
    """Normalise one report for matching. Raises TypeError for anything but a string (None or a number is
    a bug upstream, not an empty report)."""
    if not isinstance(text, str):
        raise TypeError(f"a report must be a string, got {type(text).__name__}")
    text = text[:MAX_CHARS]
    for pattern, repl in _CLEAN_STEPS:
        text = pattern.sub(repl, text)
    text = text.lower().replace("\n", " ")
    for pattern, repl in _LOWER_STEPS:
        text = pattern.sub(repl, text)
    return text.strip(" .")


# ----------------------------------------------------------------------------------------------
# Matching and classification
# ----------------------------------------------------------------------------------------------


@dataclass
class Mention:
    """One mention found in a report, with the reason for its class (returned by ``RuleLabeler.explain``)."""

    observation: str
    text: str
    start: int
    end: int
    kind: str  # "plain" | "hedged" | "attribute"
    segment: int
    code: int = BLANK  # for attribute mentions without descriptor or cue: BLANK (says nothing)
    cues: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return CODE_NAMES[self.code]


@dataclass(frozen=True)
class _Cue:
    category: str
    family: str
    start: int
    end: int
    segment: int


def _segments(text: str) -> list[int]:
    """Start offsets of clause boundaries; ``bisect_right(bounds, pos)`` is a position's clause id."""
    return [m.start() for m in _CLAUSE_BREAK.finditer(text)]


def _find_mentions(
    text: str, bounds: list[int], words: list[tuple[int, str]], keys: set[str]
) -> list[Mention]:
    found = []
    for name, (phrase_set, unmention) in _MENTIONS.items():
        matches = phrase_set.finditer(text, words, keys)
        if not matches:
            continue
        covered = _Cover(unmention.finditer(text, words, keys, overlapping=True) if unmention else [])
        for s, e, kind in matches:
            if covered(s, e):
                continue
            found.append(Mention(name, text[s:e], s, e, str(kind), bisect_right(bounds, s)))
    found.sort(key=lambda x: (x.start, x.end))
    return found


def _find_cues(text: str, bounds: list[int], words: list[tuple[int, str]], keys: set[str]) -> list[_Cue]:
    cues = []
    for s, e, category in _CUES.finditer(text, words, keys):
        if category != "pseudo":
            family = CUE_RULES[str(category)].family
            cues.append(_Cue(str(category), family, s, e, bisect_right(bounds, s)))
    return cues


class _Cover:
    """Whether a span lies inside one of the given spans, in O(log n): starts sorted, running max of ends."""

    def __init__(self, spans) -> None:
        spans = sorted((s, e) for s, e, *_ in spans)
        self.starts = [s for s, _ in spans]
        self.max_end, top = [], -1
        for _, e in spans:
            top = max(top, e)
            self.max_end.append(top)

    def __call__(self, start: int, end: int) -> bool:
        i = bisect_right(self.starts, start)
        return i > 0 and self.max_end[i - 1] >= end


def _words(gap: str) -> int:
    return len(_WORD.findall(gap))


def _more_words_than(gap: str, limit: int) -> bool:
    """``_words(gap) > limit`` reading only as far as the (limit + 1)-th word."""
    return next(itertools.islice(_WORD.finditer(gap), limit, None), None) is not None


def _gap(text: str, start: int, end: int) -> str:
    return text[start:end] if end > start else ""


def _cue_between(cues: list[_Cue], start: int, end: int, family: str) -> bool:
    """A cue that blocks ``family`` inside [start, end); ``cues`` sorted by start."""
    blockers = _BLOCKED_BY[family]
    for i in range(bisect_left(cues, start, key=lambda c: c.start), len(cues)):
        c = cues[i]
        if c.start >= end:
            return False
        if c.family in blockers and c.end <= end:
            return True
    return False


def _direct_forward(text: str, cue: _Cue, m: Mention, rule: CueRule, cues: list[_Cue]) -> bool:
    gap = _gap(text, cue.end, m.start)
    if _more_words_than(gap, rule.forward) or _GAP_VERB.search(gap) or _RESTART.search(gap):
        return False
    if (cue.family == "neg" or rule.noun_phrase) and _NEG_BREAK.search(gap):
        return False
    if rule.strict_forward and "," in gap:
        return False
    return not _cue_between(cues, cue.end, m.start, cue.family)


def _direct_backward(text: str, cue: _Cue, m: Mention, rule: CueRule, cues: list[_Cue]) -> bool:
    gap = _gap(text, m.end, cue.start)
    if _more_words_than(
        gap, rule.backward + 12
    ):  # (only the copula tail below may be longer than the window)
        return False
    gap = _COPULA_TAIL.sub("", gap)
    if _words(gap) > rule.backward:
        return False
    if not rule.loose_backward and (_GAP_VERB.search(gap) or _BACKWARD_STOP.search(gap)):
        return False
    return not _cue_between(cues, m.end, cue.start, cue.family)


def _link(text: str, left: Mention, right: Mention) -> str | None:
    """How two neighbouring mentions are coordinated: 'and' (and/or/nor), 'comma', 'same' or None."""
    if right.start < left.end:
        return "same"
    gap = text[left.end : right.start]
    if not gap.strip(" -"):
        return "same"  # one compound: "endotracheal tube", "pleural effusion"
    if (
        _more_words_than(gap, 4)
        or _GAP_VERB.search(gap)
        or _RESTART.search(gap)
        or not _SEPARATOR.search(gap)
    ):
        return None
    return "and" if _AND_OR.search(gap) else "comma"


def _reach(text: str, cue: _Cue, items: list[Mention], starts: list[int], cues: list[_Cue]) -> list[Mention]:
    """The mentions a cue applies to: direct ones within its window, then along a coordinated list.
    ``items`` are the clause's mentions sorted by start, ``starts`` their starts."""
    rule = CUE_RULES[cue.category]
    reached: list[Mention] = []
    if rule.forward:
        after = (items[i] for i in range(bisect_left(starts, cue.end), len(items)))
        chain: list[Mention] = []
        pending: list[Mention] = []  # comma-linked, kept only if an "and"/"or" link follows (strict)
        last = None
        in_window, linked = True, 0
        for m in after:
            if m.observation in rule.spares:
                continue
            if in_window and _direct_forward(text, cue, m, rule, cues):
                chain += pending + [m]
                pending = []
            else:
                in_window = in_window and not _more_words_than(_gap(text, cue.end, m.start), rule.forward)
                link = _link(text, last, m) if last is not None else None
                linked += 1
                if link is None or linked > MAX_LIST_REACH:
                    break
                if rule.strict_forward and link == "comma":
                    pending.append(m)
                else:
                    chain += pending + [m]
                    pending = []
            last = m
        reached += chain
    if rule.backward:
        before = items[
            max(0, bisect_left(starts, cue.start) - MAX_LIST_REACH - 8) : bisect_left(starts, cue.start)
        ]
        last = None
        seen_and = False
        for m in reversed(before):
            if last is None:
                ok = _direct_backward(text, cue, m, rule, cues)
            else:
                link = _link(text, m, last)
                seen_and = seen_and or link == "and"
                ok = link in ("and", "same") or (link == "comma" and seen_and)
            if not ok:
                break
            reached.append(m)
            last = m
    return reached


def _or_pairs(text: str, items: list[Mention]) -> set[int]:
    """Ids of mentions joined by "or" to another mention or alternative: "atelectasis or pneumonia"."""
    hedged: set[int] = set()
    starts = [m.start for m in items]
    lo = max(0, items[0].start - 40)
    hi = min(len(text), max(m.end for m in items) + 40)
    for o in _OR.finditer(text, lo, hi):
        before = text[max(0, o.start() - 8) : o.start()]
        if before.endswith(("with ", "whether ")) or text.startswith("or not", o.start()):
            continue
        nearby = items[
            bisect_left(starts, o.start() - _OR_WINDOW) : bisect_right(starts, o.end() + _OR_WINDOW)
        ]
        left = [m for m in nearby if m.end <= o.start() and _near(text, m.end, o.start())]
        right = [m for m in nearby if m.start >= o.end() and _near(text, o.end(), m.start)]
        if left and right:
            nearest_end = max(m.end for m in left)
            nearest_start = min(m.start for m in right)
            hedged.update(id(m) for m in left if m.end == nearest_end)
            hedged.update(id(m) for m in right if m.start == nearest_start)
    return hedged


def _near(text: str, start: int, end: int) -> bool:
    gap = text[start:end]
    return not _more_words_than(gap, 3) and "," not in gap.strip(", ") and not _GAP_VERB.search(gap)


def _has_descriptor(text: str, m: Mention, bounds: list[int]) -> tuple[bool, int]:
    """Whether an 'enlarged' word describes an attribute mention; returns (found, far end of the span)."""
    lo = max(0, m.start - 40)
    hi = min(len(text), m.end + 60)
    for d in _ENLARGED[m.observation].finditer(text, lo, hi):
        if bisect_right(bounds, d.start()) != m.segment:
            continue
        gap = _gap(text, d.end(), m.start) if d.end() <= m.start else _gap(text, m.end, d.start())
        if d.start() < m.end and d.end() > m.start:
            continue  # the descriptor is part of the mention's own text
        if not _more_words_than(gap, 4) and "," not in gap:
            return True, d.end() if d.start() >= m.end else m.start
    return False, m.end


def _classify(text: str, bounds: list[int], mentions: list[Mention], cues: list[_Cue]) -> None:
    """Set ``code`` and ``cues`` of every mention (in place)."""
    by_segment: dict[int, list[Mention]] = {}
    for m in mentions:
        by_segment.setdefault(m.segment, []).append(m)
    cues_by_segment: dict[int, list[_Cue]] = {}
    for cue in cues:
        cues_by_segment.setdefault(cue.segment, []).append(cue)
    starts_by_segment = {segment: [m.start for m in items] for segment, items in by_segment.items()}
    families: dict[int, set[str]] = {id(m): set() for m in mentions}
    for cue in cues:
        items = by_segment.get(cue.segment)
        if not items:
            continue
        for m in _reach(text, cue, items, starts_by_segment[cue.segment], cues_by_segment[cue.segment]):
            families[id(m)].add(cue.family)
            m.cues.append(cue.category)
    by_id = {id(m): m for m in mentions}
    for seg_items in by_segment.values():
        for mid in _or_pairs(text, seg_items):
            families[mid].add("unc")
            by_id[mid].cues.append("or")
    for m in mentions:
        fam = families[id(m)]
        if m.kind == "attribute":
            m.code = _attribute_code(text, bounds, m, fam, cues)
        elif "neg_unc" in fam:
            m.code = UNCERTAIN
        elif "neg" in fam:
            m.code = NEGATIVE
        elif "unc" in fam or m.kind == "hedged":
            m.code = UNCERTAIN
        else:
            m.code = POSITIVE


def _attribute_code(text: str, bounds: list[int], m: Mention, fam: set[str], cues: list[_Cue]) -> int:
    """Heart size / mediastinum: labeled only through a descriptor ('enlarged') or a cue."""
    if "neg_unc" in fam:
        return UNCERTAIN
    if "neg" in fam:
        return NEGATIVE
    found, far = _has_descriptor(text, m, bounds)
    lo, hi = min(m.end, far), max(m.end, far)
    hedged_between = found and any(
        c.family == "unc" and c.segment == m.segment
        for c in cues[
            bisect_left(cues, lo, key=lambda c: c.start) : bisect_left(cues, hi, key=lambda c: c.start)
        ]
    )
    if "unc" in fam or hedged_between:
        return UNCERTAIN
    if found:
        return POSITIVE
    if "hedge" in fam:
        return UNCERTAIN
    return BLANK


@dataclass
class Analysis:
    """One report after matching: its clean text, classified mentions, and whether it states normality."""

    clean: str
    mentions: list[Mention]
    says_normal: bool


def analyse(text: object) -> Analysis:
    """Clean one report and classify its mentions (pseudo-observations included)."""
    clean = clean_report(text)
    if not clean:
        return Analysis(clean, [], False)
    bounds = _segments(clean)
    words, keys = _word_index(clean)
    mentions = _find_mentions(clean, bounds, words, keys)
    if mentions:
        _classify(clean, bounds, mentions, _find_cues(clean, bounds, words, keys))
    says_normal = bool(_NORMAL_STATEMENT.finditer(clean, words, keys))
    return Analysis(clean, mentions, says_normal)


_ABNORMAL_INDICES = tuple(i for i in range(NO_FINDING) if i != _SUPPORT_DEVICES)


def aggregate(analysis: Analysis, no_finding_blockers: bool = True) -> np.ndarray:
    """Classified mentions -> one ``(14,)`` code vector (aggregation, heart failure and No Finding rules)."""
    codes = [BLANK] * NUM_OBSERVATIONS
    blocked = False
    negated_mention = False
    heart_failure = False
    for m in analysis.mentions:
        if m.observation == BLOCKER:
            blocked = blocked or m.code in (POSITIVE, UNCERTAIN)
            continue
        idx = _OBS_INDEX.get(m.observation)
        if idx is None:
            continue
        if _PRIORITY[m.code] > _PRIORITY[codes[idx]]:
            codes[idx] = m.code
        negated_mention = negated_mention or m.code == NEGATIVE
        if m.observation == "Edema" and m.code in (POSITIVE, UNCERTAIN) and _CHF.fullmatch(m.text):
            heart_failure = True
    if heart_failure and codes[_CARDIOMEGALY] == BLANK:
        codes[_CARDIOMEGALY] = UNCERTAIN
    abnormal = any(codes[i] in (POSITIVE, UNCERTAIN) for i in _ABNORMAL_INDICES)
    abnormal = abnormal or (no_finding_blockers and blocked)
    if (analysis.says_normal or negated_mention) and not abnormal:
        codes[NO_FINDING] = POSITIVE
    return np.array(codes, dtype=np.int64)


class RuleLabeler:
    """Rule-based CheXpert-style labeler: ``label(texts) -> (N, 14)`` int64 codes (0 blank, 1 pos, 2 neg, 3 unc).

    ``no_finding_blockers``: when True (default), an asserted abnormality outside the 13 findings
    (emphysema, hernia, granuloma, scoliosis ...) keeps No Finding blank, as the CheXpert guideline asks.
    """

    def __init__(self, no_finding_blockers: bool = True) -> None:
        self.no_finding_blockers = bool(no_finding_blockers)

    def label_one(self, text: object) -> np.ndarray:
        """One report -> ``(14,)`` codes. None, empty or non-text input gives all blank."""
        return aggregate(analyse(text), self.no_finding_blockers)

    def label(self, texts: Sequence[object]) -> np.ndarray:
        """Reports -> ``(N, 14)`` int64 codes in ``rewards.vocabulary.OBSERVATIONS`` order."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("RuleLabeler.label expects a sequence of reports, got a single string")
        out = np.zeros((len(texts), NUM_OBSERVATIONS), dtype=np.int64)
        for i, text in enumerate(texts):
            out[i] = self.label_one(text)
        return out

    def explain(self, text: object) -> list[Mention]:
        """The mentions of the 14 observations found in ``text``, each with its class and the cues that set it."""
        return [m for m in analyse(text).mentions if m.observation in _OBS_INDEX]

    def __call__(self, texts: Sequence[object]) -> np.ndarray:
        return self.label(texts)
