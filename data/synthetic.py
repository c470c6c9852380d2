"""A synthetic chest X-ray world: studies with known findings, rendered images and reference reports.

Each study draws findings over the 13 CheXbert observations from a few latent conditions, so findings
co-occur as they do in practice (heart failure -> cardiomegaly, edema, effusions; pneumonia ->
consolidation, opacity; atelectasis with effusion; pneumothorax with a chest tube or a rib fracture).
Every observation ends up present and stated (code 1), present and hedged (3: rendered subtly), absent and
negated in the report (2), or absent and not mentioned (0). No Finding is 1 exactly when no observation
other than Support Devices is positive or uncertain.

Images are grayscale PNGs drawn with numpy: view 0 is frontal (PA; the patient's right is on the image's
left), view 1, when present, lateral. Each finding has a visible sign (a wider heart, fluid with a meniscus
in a costophrenic angle, a pleural line with no lung markings beyond it, bright patches, a round nodule,
a bright tube, a broken rib), and pose, exposure and noise vary so that no two images are equal.

The output is the R2Gen layout (``annotation.json`` beside ``images/<id>/<view>.png``) plus a ``labels``
field, so ``data.r2gen.load_annotation`` reads it like IU X-Ray. Same seed -> byte-identical files.

    python -m data.synthetic --out DIR --n 2000 [--seed 0 --image-size 112 --blank-images]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from rewards.vocabulary import (
    BLANK,
    FINDINGS,
    NEGATIVE,
    NO_FINDING,
    NUM_OBSERVATIONS,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
)

ECM, CARDIO, OPACITY, LESION, EDEMA, CONSOL, PNA, ATEL, PTX, EFF, PLEURAL_OTHER, FX, DEVICE = FINDINGS
SPLITS = ("train", "val", "test")
LUNG_FINDINGS = (OPACITY, LESION, EDEMA, CONSOL, PNA, ATEL)  # parenchymal: "the lungs are clear" is false

# ------------------------------------------------------------------------------------------ the studies


@dataclass(frozen=True)
class Finding:
    """One present finding. ``certain=False`` means the report hedges it and the image shows it subtly."""

    observation: str
    certain: bool = True
    side: str = "right"  # the patient's side: "right", "left" or "bilateral"
    zone: str = "lower"  # "upper", "mid" or "lower" lung zone
    severity: float = 0.7  # 0..1, drives size / density in the image and size words in the report
    kind: str = ""  # device kind, "nodule" / "mass", or the rib number of a fracture
    offset: tuple[float, float] = (0.0, 0.0)  # position jitter in lung units


@dataclass(frozen=True)
class Study:
    id: str
    findings: tuple[Finding, ...]
    negated: tuple[str, ...]  # absent observations that the report explicitly negates
    n_views: int

    def codes(self) -> tuple[int, ...]:
        """The 14 CheXbert codes of this study's report (rewards.vocabulary order)."""
        codes = [BLANK] * NUM_OBSERVATIONS
        for name in self.negated:
            codes[OBSERVATIONS.index(name)] = NEGATIVE
        for finding in self.findings:
            index = OBSERVATIONS.index(finding.observation)
            code = POSITIVE if finding.certain else UNCERTAIN
            if codes[index] != POSITIVE:  # positive beats uncertain
                codes[index] = code
        abnormal = any(codes[i] in (POSITIVE, UNCERTAIN) for i, name in enumerate(FINDINGS) if name != DEVICE)
        codes[NO_FINDING] = 0 if abnormal else 1
        return tuple(codes)

    def has(self, observation: str) -> bool:
        return any(f.observation == observation for f in self.findings)


# Probability that an absent observation is explicitly negated (heart size and the pleura almost always
# are in real findings sections; rare findings seldom).
NEGATION_RATE = {
    CARDIO: 0.85, ECM: 0.55, PTX: 0.8, EFF: 0.8, CONSOL: 0.6, OPACITY: 0.3, EDEMA: 0.3, PNA: 0.12,
    ATEL: 0.08, LESION: 0.2, FX: 0.3, PLEURAL_OTHER: 0.04, DEVICE: 0.0,
}  # fmt: skip
# Probability that a present finding is hedged (pneumonia is mostly reported as a suspicion).
HEDGE_RATE = {PNA: 0.6, DEVICE: 0.0}
DEFAULT_HEDGE_RATE = 0.2
NORMAL_RATE = 0.35
DEVICE_KINDS = ("pacemaker", "central_catheter", "picc", "et_tube", "sternotomy")


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _choice(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _side(rng: np.random.Generator, bilateral_rate: float) -> str:
    return "bilateral" if rng.random() < bilateral_rate else _choice(rng, ("right", "left"))


def _draw_conditions(rng: np.random.Generator) -> list[tuple[str, str, float, str]]:
    """Abnormal study: (observation, side, chance, kind) candidates from latent conditions."""
    candidates: list[tuple[str, str, float, str]] = []
    while not candidates:
        if rng.random() < 0.30:  # heart failure
            side = _side(rng, 0.6)
            candidates += [(CARDIO, "", 0.85, ""), (EDEMA, "bilateral", 0.7, ""), (EFF, side, 0.5, "")]
            candidates += [(ECM, "", 0.15, ""), (DEVICE, "", 0.25, _choice(rng, ("pacemaker", "sternotomy")))]
        if rng.random() < 0.25:  # pneumonia
            side = _side(rng, 0.15)
            consolidation = rng.random() < 0.7
            candidates += [(PNA, side, 1.0, ""), (CONSOL, side, 1.0 if consolidation else 0.0, "")]
            candidates += [(OPACITY, side, 0.5 if consolidation else 1.0, ""), (EFF, side, 0.2, "")]
        if rng.random() < 0.25:  # atelectasis, often beside an effusion
            side = _side(rng, 0.4)
            candidates += [(ATEL, side, 1.0, ""), (EFF, side, 0.35, "")]
        if rng.random() < 0.08:  # pneumothorax
            side = _side(rng, 0.0)
            candidates += [(PTX, side, 1.0, ""), (DEVICE, side, 0.4, "chest_tube"), (FX, side, 0.25, "")]
        for observation, rate in (
            (LESION, 0.10),
            (FX, 0.07),
            (PLEURAL_OTHER, 0.06),
            (ECM, 0.06),
            (OPACITY, 0.10),
        ):
            if rng.random() < rate:
                candidates.append((observation, _side(rng, 0.0), 1.0, ""))
    return candidates


def _make_finding(rng: np.random.Generator, observation: str, side: str, kind: str) -> Finding:
    certain = rng.random() >= HEDGE_RATE.get(observation, DEFAULT_HEDGE_RATE)
    severity = _uniform(rng, 0.55, 1.0) if certain else _uniform(rng, 0.3, 0.45)
    zone = "lower"
    if observation in (OPACITY, CONSOL, PNA, LESION):
        zone = _choice(rng, ("upper", "mid", "lower", "lower"))
    elif observation in (PTX, PLEURAL_OTHER):
        zone = "upper"
    if observation == LESION:
        kind = "mass" if rng.random() < 0.25 else "nodule"
    elif observation == FX:
        kind = str(int(rng.integers(4, 9)))  # rib number
    elif observation == DEVICE and not kind:
        kind = _choice(rng, DEVICE_KINDS)
    if observation in (CARDIO, ECM, EDEMA, DEVICE) and kind != "chest_tube":
        side = "bilateral" if observation == EDEMA else ""
    offset = (_uniform(rng, -0.3, 0.3), _uniform(rng, -0.05, 0.05))
    return Finding(observation, certain, side or _side(rng, 0.0), zone, severity, kind, offset)


def sample_study(rng: np.random.Generator, study_id: str) -> Study:
    """Draw one study: findings from latent conditions, then which absent observations the report negates."""
    findings: dict[str, Finding] = {}
    if rng.random() >= NORMAL_RATE:
        for observation, side, chance, kind in _draw_conditions(rng):
            if observation not in findings and rng.random() < chance:
                findings[observation] = _make_finding(rng, observation, side, kind)
    if DEVICE not in findings and rng.random() < 0.08:
        findings[DEVICE] = _make_finding(rng, DEVICE, "", "")
    if PNA in findings:  # pneumonia is seen as a patch: its consolidation / opacity share its location
        pneumonia = findings[PNA]
        for name in (CONSOL, OPACITY):
            if name in findings:
                findings[name] = replace(findings[name], side=pneumonia.side, zone=pneumonia.zone)
        if not ({CONSOL, OPACITY} & set(findings)):
            findings[CONSOL] = replace(pneumonia, observation=CONSOL, certain=True)
    negated = tuple(o for o in FINDINGS if o not in findings and rng.random() < NEGATION_RATE[o])
    if not findings and not negated:  # a normal report still says something about the heart and pleura
        negated = (CARDIO, EFF, PTX)
    n_views = 2 if rng.random() < 0.7 else 1
    return Study(study_id, tuple(findings[o] for o in FINDINGS if o in findings), negated, n_views)


# ------------------------------------------------------------------------------------------- the report

_POSITIVE = {
    CARDIO: [
        "The heart is enlarged.",
        "{Degree} cardiomegaly.",
        "There is {degree} cardiomegaly.",
        "The cardiac silhouette is enlarged.",
        "Cardiomegaly is present.",
        "The heart is {degree}ly enlarged.",
    ],
    ECM: [
        "The mediastinum is widened.",
        "The cardiomediastinal silhouette is enlarged.",
        "There is widening of the mediastinum.",
        "The mediastinal contour is widened.",
    ],
    OPACITY: [
        "There is {patchy} opacity {where}.",
        "{Patchy} airspace opacity {where}.",
        "Focal opacity is noted {where}.",
        "Increased opacity {where}.",
    ],
    LESION: [
        "There is a {cm} cm {lesion} {where}.",
        "A {cm} cm {lesion} is seen {where}.",
        "{Lesion} {where} measuring {cm} cm.",
    ],
    EDEMA: [
        "{Degree} pulmonary edema.",
        "There is {degree} interstitial edema.",
        "Findings of {degree} pulmonary edema.",
        "{Degree} bilateral perihilar edema.",
    ],
    CONSOL: [
        "There is consolidation {where}.",
        "Focal consolidation {where}.",
        "{Lobe} consolidation.",
        "Dense consolidation is present {where}.",
    ],
    PNA: ["{Lobe} pneumonia.", "There is {lobe} pneumonia.", "Findings of {lobe} pneumonia."],
    ATEL: [
        "{Degree} atelectasis {where}.",
        "There is subsegmental atelectasis {where}.",
        "Atelectasis is present {where}.",
    ],
    PTX: [
        "{Size} {side} pneumothorax.",
        "There is a {size} {side} apical pneumothorax.",
        "{Size} {side}-sided pneumothorax is present.",
    ],
    EFF: [
        "{Size} {side} pleural {effusion}.",
        "There {is_are} {a_size} {side} pleural {effusion}.",
        "{Size} {side} {effusion} {is_are} present.",
    ],
    PLEURAL_OTHER: [
        "{Side} apical pleural thickening.",
        "There is {side} pleural thickening.",
        "Mild pleural thickening along the {side} chest wall.",
    ],
    FX: [
        "Acute fracture of the {side} {rib} rib.",
        "There is a displaced {side} {rib} rib fracture.",
        "{Side} {rib} rib fracture.",
    ],
}
_HEDGED = {
    CARDIO: [
        "Borderline cardiomegaly.",
        "The heart may be mildly enlarged.",
        "Possible mild cardiomegaly.",
        "The cardiac silhouette is possibly enlarged.",
    ],
    ECM: [
        "The mediastinum may be mildly widened.",
        "Possible widening of the mediastinum.",
        "The mediastinal contour is questionably widened.",
    ],
    OPACITY: [
        "Possible faint opacity {where}.",
        "Questionable opacity {where}.",
        "There may be a subtle opacity {where}.",
    ],
    LESION: [
        "Possible small nodule {where}.",
        "A questionable nodule is seen {where}.",
        "A small nodule {where} cannot be excluded.",
    ],
    EDEMA: [
        "Mild pulmonary vascular congestion.",
        "Possible mild interstitial edema.",
        "Mild edema cannot be excluded.",
        "Findings may represent mild pulmonary edema.",
    ],
    CONSOL: [
        "Possible consolidation {where}.",
        "Questionable early consolidation {where}.",
        "Consolidation {where} cannot be excluded.",
    ],
    PNA: [
        "Findings may represent pneumonia.",
        "Possible {lobe} pneumonia.",
        "Pneumonia cannot be excluded.",
        "Early pneumonia {where} is not excluded.",
    ],
    ATEL: [
        "Possible atelectasis {where}.",
        "Probable subsegmental atelectasis {where}.",
        "Questionable atelectasis {where}.",
    ],
    PTX: [
        "Possible tiny {side} apical pneumothorax.",
        "A small {side} pneumothorax cannot be excluded.",
        "Questionable {side} apical pneumothorax.",
    ],
    EFF: [
        "Possible small {side} pleural {effusion}.",
        "Blunting of the {side} costophrenic {angle} may reflect a small {effusion}.",
        "Trace {side} pleural {effusion} {is_are} not excluded.",
    ],
    PLEURAL_OTHER: ["Possible {side} pleural thickening.", "Questionable {side} apical pleural thickening."],
    FX: [
        "Possible nondisplaced fracture of the {side} {rib} rib.",
        "Questionable {side} {rib} rib fracture.",
        "A subtle {side} rib fracture cannot be excluded.",
    ],
}
_DEVICE = {
    "pacemaker": [
        "Left chest wall pacemaker with leads in the right atrium and right ventricle.",
        "A dual-lead pacemaker is present.",
        "Left-sided pacemaker in place.",
    ],
    "central_catheter": [
        "Right internal jugular central venous catheter with tip in the superior vena cava.",
        "Right jugular catheter tip projects over the cavoatrial junction.",
    ],
    "picc": ["Right-sided PICC terminates in the lower superior vena cava.", "A right arm PICC is in place."],
    "et_tube": [
        "Endotracheal tube terminates 4 cm above the carina.",
        "An endotracheal tube is in good position.",
    ],
    "chest_tube": ["{Side} chest tube in place.", "A {side}-sided chest tube is present."],
    "sternotomy": ["Median sternotomy wires are present.", "Sternotomy wires are noted."],
}
_NEGATIVE = {
    CARDIO: [
        "The heart is normal in size.",
        "Heart size is normal.",
        "Normal heart size.",
        "No cardiomegaly.",
        "The cardiac silhouette is within normal limits.",
        "Heart size is within normal limits.",
    ],
    ECM: [
        "The mediastinal contours are normal.",
        "The cardiomediastinal silhouette is within normal limits.",
        "Normal mediastinal contour.",
        "The mediastinum is not widened.",
    ],
    PLEURAL_OTHER: ["No pleural thickening."],
    FX: ["No acute fracture.", "No displaced rib fracture.", "No acute rib fracture is seen."],
}
_HEART_AND_MEDIASTINUM_NORMAL = [
    "The heart size and mediastinal contours are within normal limits.",
    "Normal heart size and mediastinal contours.",
    "Heart size and mediastinal contours are normal.",
]
# Noun phrases for combined negations ("No pleural effusion or pneumothorax.").
_NEGATED_NOUNS = {
    PTX: ["pneumothorax"],
    EFF: ["pleural effusion", "effusion"],
    CONSOL: ["focal consolidation", "consolidation"],
    OPACITY: ["focal airspace opacity", "airspace disease"],
    EDEMA: ["pulmonary edema", "edema"],
    PNA: ["pneumonia"],
    ATEL: ["atelectasis"],
    LESION: ["pulmonary nodule", "focal nodule", "pulmonary mass"],
}
_NEGATION_FRAMES = [
    "No {list}.",
    "There is no {list}.",
    "No evidence of {list}.",
    "No {list} is seen.",
    "Negative for {list}.",
]
_LUNGS_CLEAR = [
    "The lungs are clear.",
    "Lungs are clear.",
    "The lungs are clear bilaterally.",
    "Both lungs are clear.",
    "The lungs are well expanded and clear.",
]
_BONES = [
    "The osseous structures are intact.",
    "Visualized osseous structures are unremarkable.",
    "The bony thorax is unremarkable.",
]
_VESSELS = ["Pulmonary vasculature is within normal limits.", "The pulmonary vascularity is normal."]
_ORDINALS = {"4": "fourth", "5": "fifth", "6": "sixth", "7": "seventh", "8": "eighth"}
_LOBES = {
    ("right", "upper"): "right upper lobe",
    ("right", "mid"): "right middle lobe",
    ("right", "lower"): "right lower lobe",
    ("left", "upper"): "left upper lobe",
    ("left", "mid"): "lingular",
    ("left", "lower"): "left lower lobe",
}
# Section of each sentence, for the canonical order: heart, lungs, pleura, bones, devices.
_SECTION = {CARDIO: 0, ECM: 0, OPACITY: 1, LESION: 1, EDEMA: 1, CONSOL: 1, PNA: 1, ATEL: 1, PTX: 2, EFF: 2,
            PLEURAL_OTHER: 2, FX: 3, DEVICE: 4}  # fmt: skip


def _size_word(severity: float) -> str:
    return "small" if severity < 0.7 else "moderate" if severity < 0.9 else "large"


def _degree_word(severity: float) -> str:
    return "mild" if severity < 0.7 else "moderate" if severity < 0.9 else "severe"


def _where(rng: np.random.Generator, f: Finding) -> str:
    if f.side == "bilateral":
        options = {
            "lower": ["at both lung bases", "in both lower lobes", "at the bilateral lung bases"],
            "mid": ["in both mid lungs"],
            "upper": ["in both upper lobes", "at both lung apices"],
        }
        return _choice(rng, options[f.zone])
    options = {
        "lower": [f"at the {f.side} lung base", f"in the {f.side} lower lobe", f"at the {f.side} base"],
        "mid": [f"in the {f.side} mid lung", f"in the {_LOBES[(f.side, 'mid')]} region"],
        "upper": [f"in the {f.side} upper lobe", f"in the {f.side} upper lung", f"at the {f.side} apex"],
    }
    return _choice(rng, options[f.zone])


def _fields(rng: np.random.Generator, f: Finding) -> dict[str, str]:
    bilateral = f.side == "bilateral"
    size = _size_word(f.severity)
    lobe = "multifocal" if bilateral else _LOBES[(f.side, f.zone)]
    lesion = f.kind or "nodule"
    fields = {
        "side": f.side,
        "size": size,
        "degree": _degree_word(f.severity),
        "where": _where(rng, f),
        "lobe": lobe,
        "patchy": _choice(rng, ["patchy", "hazy", "focal", "ill-defined"]),
        "lesion": lesion,
        "cm": f"{(1.0 + 3.0 * f.severity) if lesion == 'mass' else (0.5 + 1.2 * f.severity):.1f}",
        "rib": _ORDINALS.get(f.kind, "sixth"),
        "effusion": "effusions" if bilateral else "effusion",
        "is_are": "are" if bilateral else "is",
        "a_size": size if bilateral else f"a {size}",
        "angle": "angles" if bilateral else "angle",
    }
    fields.update(
        {key[0].upper() + key[1:]: value[0].upper() + value[1:] for key, value in list(fields.items())}
    )
    return fields


def _sentence(rng: np.random.Generator, template: str, f: Finding) -> str:
    text = template.format(**_fields(rng, f))
    return text[0].upper() + text[1:]


def _join_or(rng: np.random.Generator, nouns: Sequence[str]) -> str:
    if len(nouns) == 1:
        return nouns[0]
    comma = "," if rng.random() < 0.5 else ""
    return ", ".join(nouns[:-1]) + f"{comma if len(nouns) > 2 else ''} or {nouns[-1]}"


def _combined_positive(
    rng: np.random.Generator, by_name: dict[str, Finding]
) -> tuple[list[tuple[int, str]], set]:
    """Sentences that state two findings at once, as radiologists often do; and the findings they cover."""
    out: list[tuple[int, str]] = []
    used: set[str] = set()
    cardio, edema, eff, atel = by_name.get(CARDIO), by_name.get(EDEMA), by_name.get(EFF), by_name.get(ATEL)
    consol, pna = by_name.get(CONSOL), by_name.get(PNA)
    if cardio and edema and cardio.certain and edema.certain and rng.random() < 0.4:
        text = f"{_degree_word(cardio.severity).capitalize()} cardiomegaly with {_degree_word(edema.severity)} pulmonary edema."
        out.append((0, text))
        used |= {CARDIO, EDEMA}
    if eff and atel and eff.certain and atel.certain and eff.side == atel.side and rng.random() < 0.4:
        fields = _fields(rng, eff)
        adjacent = "bibasilar atelectasis" if eff.side == "bilateral" else "atelectasis"
        out.append((2, "{Size} {side} pleural {effusion} with adjacent ".format(**fields) + adjacent + "."))
        used |= {EFF, ATEL}
    if consol and pna and consol.certain and not pna.certain and rng.random() < 0.5:
        out.append((1, "{Lobe} consolidation, concerning for pneumonia.".format(**_fields(rng, consol))))
        used |= {CONSOL, PNA}
    return out, used


def _negation_sentences(rng: np.random.Generator, negated: Sequence[str]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    pending = list(negated)
    if CARDIO in pending and ECM in pending and rng.random() < 0.4:
        out.append((0, _choice(rng, _HEART_AND_MEDIASTINUM_NORMAL)))
        pending = [o for o in pending if o not in (CARDIO, ECM)]
    for name in [o for o in pending if o in _NEGATIVE]:
        out.append((_SECTION[name], _choice(rng, _NEGATIVE[name])))
    groupable = [o for o in pending if o in _NEGATED_NOUNS]
    order = rng.permutation(len(groupable))
    groupable = [groupable[i] for i in order]
    while groupable:
        size = min(len(groupable), int(rng.integers(1, 4)))
        group, groupable = groupable[:size], groupable[size:]
        nouns = [_choice(rng, _NEGATED_NOUNS[name]) for name in group]
        frame = _choice(
            rng, _NEGATION_FRAMES[:1] if len(group) == 1 and rng.random() < 0.5 else _NEGATION_FRAMES
        )
        out.append((min(_SECTION[name] for name in group), frame.format(list=_join_or(rng, nouns))))
    return out


def write_report(study: Study, rng: np.random.Generator) -> str:
    """A findings-style report whose labels are exactly ``study.codes()``."""
    by_name = {f.observation: f for f in study.findings}
    sentences, covered = _combined_positive(rng, by_name)
    for f in study.findings:
        if f.observation in covered:
            continue
        if f.observation == DEVICE:
            sentences.append((4, _sentence(rng, _choice(rng, _DEVICE[f.kind]), f)))
        else:
            bank = _POSITIVE if f.certain else _HEDGED
            sentences.append((_SECTION[f.observation], _sentence(rng, _choice(rng, bank[f.observation]), f)))
    sentences += _negation_sentences(rng, study.negated)
    lung_findings = [f for f in study.findings if f.observation in LUNG_FINDINGS]
    if not lung_findings and rng.random() < 0.85:
        sentences.append((1, _choice(rng, _LUNGS_CLEAR)))
    elif lung_findings and rng.random() < 0.25:
        sentences.append((1, "The lungs are otherwise clear."))
    if not study.has(EDEMA) and rng.random() < 0.3:
        sentences.append((1, _choice(rng, _VESSELS)))
    if not study.has(FX) and FX not in study.negated and rng.random() < 0.5:
        sentences.append((3, _choice(rng, _BONES)))
    order = rng.permutation(len(sentences))
    shuffled = [sentences[i] for i in order]
    if rng.random() < 0.6:  # most reports follow the usual order; the rest are shuffled
        shuffled.sort(key=lambda item: item[0])
    return " ".join(text for _, text in shuffled)


# ------------------------------------------------------------------------------------------- the images

_LUNG_CENTER_X = {"right": 0.31, "left": 0.69}  # frontal PA: the patient's right lung is on the image's left
_LUNG_CY, _LUNG_RX, _LUNG_RY = 0.47, 0.15, 0.31
_ZONE_Y = {"upper": 0.3, "mid": 0.47, "lower": 0.64}
_HEART_FRONTAL = (0.535, 0.64, 0.12, 0.105)  # cx, cy, rx, ry of a normal heart
_HEART_RX_GROWTH = 0.075  # cardiomegaly widens the heart by up to this much (times severity)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _ellipse_distance(x, y, cx, cy, rx, ry):
    return np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)


def _soft_inside(distance: np.ndarray, edge: float = 0.05) -> np.ndarray:
    return _sigmoid((1.0 - distance) / edge)


def _blob(x, y, cx, cy, sigma):
    return np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2.0 * sigma**2)))


def _polyline_distance(x, y, points: Sequence[tuple[float, float]]) -> np.ndarray:
    best = np.full(x.shape, np.inf)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
        best = np.minimum(best, np.hypot(x - (x0 + t * dx), y - (y0 + t * dy)))
    return best


def _tube(x, y, points, width: float) -> np.ndarray:
    return np.exp(-((_polyline_distance(x, y, points) / width) ** 2))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.random((cells + 1, cells + 1))
    t = np.linspace(0.0, cells, size)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _pose_grid(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Anatomy coordinates (0..1) of each pixel under a small random rotation, scale and shift."""
    angle = math.radians(_uniform(rng, -3.0, 3.0))
    scale = _uniform(rng, 0.96, 1.04)
    shift_x, shift_y = _uniform(rng, -0.025, 0.025), _uniform(rng, -0.025, 0.025)
    pixel = (np.arange(size) + 0.5) / size - 0.5
    py, px = np.meshgrid(pixel, pixel, indexing="ij")
    x = 0.5 + (math.cos(angle) * px - math.sin(angle) * py) / scale + shift_x
    y = 0.5 + (math.sin(angle) * px + math.cos(angle) * py) / scale + shift_y
    return x, y


def _lung_point(f: Finding, side: str) -> tuple[float, float]:
    cx = _LUNG_CENTER_X[side] + f.offset[0] * _LUNG_RX * (1 if side == "right" else -1) * 0.8
    return cx, _ZONE_Y[f.zone] + f.offset[1]


def _sides(f: Finding) -> tuple[str, ...]:
    return ("right", "left") if f.side == "bilateral" else (f.side if f.side in _LUNG_CENTER_X else "right",)


_RIB_TOP, _RIB_STEP, _RIB_CURVE, _RIB_HALF_WIDTH, _N_RIBS = 0.16, 0.068, 0.11, 0.009, 8


def _rib_centre_y(x: np.ndarray) -> np.ndarray:
    """Height of rib 0 at each x; rib k lies ``k * _RIB_STEP`` lower (posterior ribs curve down laterally)."""
    return _RIB_TOP + _RIB_CURVE * (np.abs(x - 0.5) / 0.35) ** 2


def _ribs(x, y) -> np.ndarray:
    """All posterior rib arcs of both sides at once (distance to the nearest rib centre line)."""
    phase = (y - _rib_centre_y(x)) / _RIB_STEP
    nearest = np.clip(np.round(phase), 0, _N_RIBS - 1)
    distance = (phase - nearest) * _RIB_STEP
    lateral = np.abs(x - 0.5)
    return np.exp(-((distance / _RIB_HALF_WIDTH) ** 2)) * (lateral > 0.05) * (lateral < 0.37)


def _fractured_rib_change(x, y, side: str, rib: int, severity: float) -> np.ndarray:
    """What a fracture changes on one rib: a gap at mid-lung and the lateral part stepped down."""
    lateral = np.abs(x - 0.5)
    on_side = ((x < 0.5) if side == "right" else (x >= 0.5)) * (lateral > 0.05) * (lateral < 0.37)
    rib_y = _rib_centre_y(x) + rib * _RIB_STEP
    intact = np.exp(-(((y - rib_y) / _RIB_HALF_WIDTH) ** 2))
    broken_y = rib_y + (0.012 + 0.012 * severity) * (lateral > 0.25)
    broken = np.exp(-(((y - broken_y) / _RIB_HALF_WIDTH) ** 2)) * (
        1.0 - np.exp(-(((lateral - 0.25) / 0.008) ** 2))
    )
    return (broken - intact) * on_side


def _pneumothorax(x, y, side: str, severity: float, lung: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(free air, pleural line) of a pneumothorax: the lung collapses toward the hilum and the base, leaving
    an apical-lateral rim of air without markings, bounded by the visceral pleural line."""
    depth = 0.15 + 0.25 * severity
    toward_hilum = 1.0 if side == "right" else -1.0
    # The collapsed lung keeps its medial and basal edges (those of the full lung) and shrinks from the rest.
    cx = _LUNG_CENTER_X[side] + toward_hilum * depth * _LUNG_RX
    cy = _LUNG_CY + 0.5 * depth * _LUNG_RY
    d = _ellipse_distance(x, y, cx, cy, _LUNG_RX * (1 - depth), _LUNG_RY * (1 - 0.5 * depth))
    inside_lung = _soft_inside(
        _ellipse_distance(x, y, _LUNG_CENTER_X[side], _LUNG_CY, _LUNG_RX, _LUNG_RY) / 0.93, 0.03
    )
    lateral_or_apical = np.maximum(
        _sigmoid(toward_hilum * (cx - x) / 0.01), _sigmoid((cy - 0.4 * _LUNG_RY - y) / 0.01)
    )
    free = _sigmoid((d - 1.0) / 0.03) * lung * lateral_or_apical
    line = np.exp(-(((d - 1.0) / 0.035) ** 2)) * inside_lung * lateral_or_apical
    return free, line


def _device_paths(kind: str, side: str) -> list[list[tuple[float, float]]]:
    if kind == "pacemaker":
        return [
            [(0.76, 0.2), (0.62, 0.3), (0.5, 0.45), (0.47, 0.6)],
            [(0.76, 0.2), (0.6, 0.33), (0.52, 0.62)],
        ]
    if kind == "central_catheter":
        return [[(0.33, 0.02), (0.38, 0.18), (0.45, 0.28), (0.46, 0.42)]]
    if kind == "picc":
        return [[(0.02, 0.3), (0.15, 0.2), (0.33, 0.19), (0.45, 0.27), (0.46, 0.44)]]
    if kind == "et_tube":
        return [[(0.5, 0.0), (0.5, 0.3)]]
    if kind == "chest_tube":
        x = 0.1 if side != "left" else 0.9
        inner = 0.27 if side != "left" else 0.73
        return [[(x, 0.8), (x + (0.08 if side != "left" else -0.08), 0.55), (inner, 0.25)]]
    return [[(0.5 - 0.012, y), (0.5 + 0.012, y + 0.01)] for y in (0.3, 0.38, 0.46, 0.54)]  # sternotomy wires


def _render_frontal(study: Study, rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _pose_grid(rng, size)
    texture = _smooth_noise(rng, size, 14)
    streak_phase = _uniform(rng, 0.0, 2 * math.pi)
    by_name = {f.observation: f for f in study.findings}

    body = _soft_inside(_ellipse_distance(x, y, 0.5, 0.56, 0.47, 0.62), 0.04)
    image = 0.06 + 0.38 * body
    lungs = {
        s: _soft_inside(_ellipse_distance(x, y, cx, _LUNG_CY, _LUNG_RX, _LUNG_RY))
        for s, cx in _LUNG_CENTER_X.items()
    }
    ptx_free = {s: np.zeros_like(x) for s in lungs}  # where a pneumothorax leaves no lung markings
    ptx_line = np.zeros_like(x)
    if PTX in by_name:
        for s in _sides(by_name[PTX]):
            ptx_free[s], line = _pneumothorax(x, y, s, by_name[PTX].severity, lungs[s])
            ptx_line = ptx_line + line
    for s, lung in lungs.items():
        hilum_x = 0.42 if s == "right" else 0.58
        angle = np.arctan2(y - 0.47, x - hilum_x)
        radius = np.hypot(x - hilum_x, y - 0.47)
        streaks = (0.5 + 0.5 * np.cos(38.0 * angle + streak_phase + 6.0 * texture)) ** 6 * np.exp(
            -radius / 0.22
        )
        markings = 0.09 * streaks
        if EDEMA in by_name:
            markings = markings * (1.0 + 1.5 * by_name[EDEMA].severity)
        image = image - 0.27 * lung + markings * lung * (1.0 - ptx_free[s]) - 0.05 * ptx_free[s]
    ribs = _ribs(x, y)
    if FX in by_name:
        f = by_name[FX]
        for s in _sides(f):
            ribs = ribs + _fractured_rib_change(x, y, s, int(f.kind) - 2, f.severity)
    image = image + 0.11 * ribs * body
    image = image + 0.1 * np.exp(-(((y - 0.14 - 0.12 * np.abs(x - 0.5)) / 0.012) ** 2)) * (
        np.abs(x - 0.5) < 0.3
    )
    mediastinum_half = 0.055 + (0.05 * by_name[ECM].severity if ECM in by_name else 0.0)
    mediastinum = (
        _sigmoid((mediastinum_half - np.abs(x - 0.5)) / 0.008) * _sigmoid((0.62 - y) / 0.02) * (y > 0.06)
    )
    image = image * (1 - mediastinum) + 0.56 * mediastinum
    cx, cy, rx, ry = _HEART_FRONTAL
    if CARDIO in by_name:
        rx += _HEART_RX_GROWTH * by_name[CARDIO].severity
        ry += 0.02 * by_name[CARDIO].severity
    heart = _soft_inside(_ellipse_distance(x, y, cx, cy, rx, ry), 0.04)
    image = image * (1 - heart) + 0.62 * heart
    image = image + 0.25 * ptx_line  # the visceral pleural line, drawn over the heart's edge too
    image = _draw_lung_findings(image, x, y, by_name, lungs, texture, frontal=True)
    if EFF in by_name:
        f = by_name[EFF]
        for s in _sides(f):
            height = 0.1 + 0.16 * f.severity
            lateral = np.clip(np.abs(x - 0.5) - abs(_LUNG_CENTER_X[s] - 0.5), 0.0, _LUNG_RX) / _LUNG_RX
            meniscus = (_LUNG_CY + _LUNG_RY) - height * (0.55 + 0.7 * lateral)
            fluid = _sigmoid((y - meniscus) / 0.012) * lungs[s]
            image = image * (1 - fluid) + 0.52 * fluid
    if DEVICE in by_name:
        f = by_name[DEVICE]
        for path in _device_paths(f.kind, f.side):
            image = np.maximum(image, 0.95 * _tube(x, y, path, 0.008))
        if f.kind == "pacemaker":
            box = _soft_inside(np.maximum(np.abs(x - 0.78) / 0.05, np.abs(y - 0.19) / 0.035), 0.05)
            image = np.maximum(image, 0.9 * box)
    return image


def _draw_lung_findings(image, x, y, by_name, lungs, texture, frontal: bool) -> np.ndarray:
    """Patches, nodules, edema haze, atelectasis bands and pleural thickening (frontal or lateral)."""
    lung_any = np.maximum(*lungs.values()) if frontal else lungs["lateral"]

    def where(f: Finding, s: str) -> tuple[float, float]:
        if frontal:
            return _lung_point(f, s)
        return 0.5 + f.offset[0] * 0.4, _ZONE_Y[f.zone] + f.offset[1]

    for name in (OPACITY, CONSOL):
        if name not in by_name:
            continue
        f = by_name[name]
        for s in _sides(f):
            px, py = where(f, s)
            if name == OPACITY:
                patch = _blob(x, y, px, py, 0.04 + 0.03 * f.severity) * (0.6 + 0.4 * texture)
                image = image + (0.12 + 0.2 * f.severity) * patch * lung_any
            else:
                patch = _soft_inside(_ellipse_distance(x, y, px, py, 0.06 + 0.04 * f.severity, 0.05), 0.12)
                image = image + (0.2 + 0.25 * f.severity) * patch * lung_any
    if LESION in by_name:
        f = by_name[LESION]
        px, py = where(f, _sides(f)[0])
        radius = (0.04 + 0.025 * f.severity) if f.kind == "mass" else (0.014 + 0.014 * f.severity)
        image = image + 0.42 * _soft_inside(np.hypot(x - px, y - py) / radius, 0.12)
    if EDEMA in by_name:
        f = by_name[EDEMA]
        hila = ((0.4, 0.5), (0.6, 0.5)) if frontal else ((0.5, 0.5),)
        haze = sum(_blob(x, y, hx, hy, 0.1) for hx, hy in hila)
        image = image + (0.08 + 0.16 * f.severity) * haze * lung_any
    if ATEL in by_name:
        f = by_name[ATEL]
        for s in _sides(f):
            px = _LUNG_CENTER_X[s] if frontal else 0.55
            band_y = _LUNG_CY + _LUNG_RY - 0.09
            thickness = 0.008 + 0.008 * f.severity
            band = np.exp(-(((y - band_y + 0.1 * (x - px)) / thickness) ** 2)) * (np.abs(x - px) < 0.1)
            image = image + 0.3 * band * lung_any
    if PLEURAL_OTHER in by_name:
        f = by_name[PLEURAL_OTHER]
        for s in _sides(f):
            cx = _LUNG_CENTER_X[s] if frontal else 0.52
            d = _ellipse_distance(x, y, cx, _LUNG_CY, _LUNG_RX if frontal else 0.27, _LUNG_RY)
            rim = np.exp(-(((d - 0.96) / 0.04) ** 2)) * (y < _LUNG_CY)
            image = image + (0.12 + 0.15 * f.severity) * rim
    if PNA in by_name and not ({OPACITY, CONSOL} & set(by_name)):
        f = by_name[PNA]
        px, py = where(f, _sides(f)[0])
        image = image + 0.3 * _blob(x, y, px, py, 0.06) * lung_any
    return image


def _render_lateral(study: Study, rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _pose_grid(rng, size)
    texture = _smooth_noise(rng, size, 14)
    by_name = {f.observation: f for f in study.findings}
    body = _soft_inside(_ellipse_distance(x, y, 0.5, 0.56, 0.42, 0.62), 0.04)
    lung = _soft_inside(_ellipse_distance(x, y, 0.53, _LUNG_CY, 0.27, _LUNG_RY))
    image = 0.06 + 0.38 * body - 0.24 * lung + 0.04 * texture * lung
    spine = _sigmoid((0.045 - np.abs(x - 0.82)) / 0.008) * (y > 0.1) * (y < 0.85)
    image = image + 0.25 * spine * (0.8 + 0.2 * np.cos(y * 70.0) ** 2)
    image = image + 0.15 * np.exp(-(((x - 0.17) / 0.012) ** 2)) * (y > 0.2) * (y < 0.6)  # sternum
    rx = 0.12 + (0.06 * by_name[CARDIO].severity if CARDIO in by_name else 0.0)
    heart = _soft_inside(_ellipse_distance(x, y, 0.33, 0.64, rx, 0.12), 0.05)
    image = image * (1 - heart) + 0.58 * heart
    if PTX in by_name:
        f = by_name[PTX]
        line_y = 0.17 + 0.12 * f.severity
        apex = _sigmoid((line_y - y) / 0.01) * lung
        image = image - 0.05 * apex + 0.18 * np.exp(-(((y - line_y) / 0.008) ** 2)) * lung
    image = _draw_lung_findings(image, x, y, by_name, {"lateral": lung}, texture, frontal=False)
    if EFF in by_name:
        f = by_name[EFF]
        height = 0.08 + 0.14 * f.severity
        posterior = np.clip((x - 0.53) / 0.27, 0.0, 1.0)
        fluid = _sigmoid((y - ((_LUNG_CY + _LUNG_RY) - height * (0.4 + 0.8 * posterior))) / 0.012) * lung
        image = image * (1 - fluid) + 0.5 * fluid
    if DEVICE in by_name:
        f = by_name[DEVICE]
        for path in _device_paths(f.kind, f.side):
            lateral_path = [(0.3 + 0.3 * abs(px - 0.5), py) for px, py in path]
            image = np.maximum(image, 0.95 * _tube(x, y, lateral_path, 0.008))
    return image


def render_view(study: Study, view: int, rng: np.random.Generator, size: int = 112) -> np.ndarray:
    """The ``view``-th image of a study (0 frontal, 1 lateral) as a ``(size, size)`` uint8 array.

    Anatomy, pose and noise come from ``rng`` and do not depend on the findings, so two studies that
    differ only in one finding, rendered with equally seeded generators, differ only where it shows.
    """
    drawn = _render_frontal(study, rng, size) if view == 0 else _render_lateral(study, rng, size)
    gain, bias = _uniform(rng, 0.92, 1.08), _uniform(rng, -0.03, 0.03)
    noisy = drawn * gain + bias + rng.normal(0.0, 0.02, drawn.shape)
    return np.round(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8)


# ------------------------------------------------------------------------------------------- the world


def _split_names(n: int, fractions: Sequence[float], rng: np.random.Generator) -> list[str]:
    if (
        len(fractions) != len(SPLITS)
        or any(f < 0 for f in fractions)
        or not math.isclose(sum(fractions), 1.0)
    ):
        raise ValueError(
            f"split_fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}"
        )
    counts = [int(round(f * n)) for f in fractions[1:]]
    names = ["val"] * counts[0] + ["test"] * counts[1]
    names = ["train"] * (n - len(names)) + names
    return [names[i] for i in rng.permutation(n)]


def generate_world(
    out_dir: str | Path,
    n: int = 2000,
    seed: int = 0,
    image_size: int = 112,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    blank_images: bool = False,
) -> Path:
    """Write ``n`` studies to ``out_dir`` (``annotation.json`` + ``images/``) and return the JSON's path.

    Study ``i`` is drawn from its own generator seeded by ``(seed, i)``, so the files are identical for
    a seed. Split sizes follow ``split_fractions`` (rounded; train takes the remainder). ``blank_images``
    writes the blind control: the same studies, reports and labels, every view one flat grey at the mean
    intensity of the views it replaces, so a model trained on it can learn nothing from the image.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    splits = _split_names(n, split_fractions, np.random.default_rng([seed, n, 7]))
    annotation: dict[str, list[dict]] = {name: [] for name in SPLITS}
    width = max(5, len(str(n - 1)))
    grey_total, blank_paths = 0.0, []
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        study = sample_study(rng, f"SYN{index:0{width}d}")
        report = write_report(study, rng)
        paths = []
        for view in range(study.n_views):
            relative = f"{study.id}/{view}.png"
            pixels = render_view(study, view, rng, image_size)
            (images_dir / study.id).mkdir(exist_ok=True)
            if blank_images:
                grey_total += float(pixels.mean())
                blank_paths.append(relative)
            else:
                Image.fromarray(pixels, mode="L").save(images_dir / relative, optimize=False)
            paths.append(relative)
        split = splits[index]
        annotation[split].append(
            {
                "id": study.id,
                "report": report,
                "image_path": paths,
                "split": split,
                "labels": list(study.codes()),
            }
        )
    if blank_images:
        flat = Image.new("L", (image_size, image_size), int(round(grey_total / len(blank_paths))))
        for relative in blank_paths:
            flat.save(images_dir / relative, optimize=False)
    path = out / "annotation.json"
    path.write_text(json.dumps(annotation, indent=1) + "\n", encoding="utf-8")
    return path


def world_texts(annotation_path: str | Path) -> list[str]:
    """All reports of an annotation file (train, val, test, then any other split), for tokenizer training."""
    content = json.loads(Path(annotation_path).read_text(encoding="utf-8"))
    order = [s for s in SPLITS if s in content] + sorted(s for s in content if s not in SPLITS)
    return [entry["report"] for split in order for entry in content[split]]


def world_summary(annotation_path: str | Path) -> str:
    """Counts per split, prevalence (positive / uncertain / negated) per observation, report lengths."""
    content = json.loads(Path(annotation_path).read_text(encoding="utf-8"))
    entries = [e for split in SPLITS for e in content.get(split, [])]
    codes = np.array([e["labels"] for e in entries])
    words = np.array([len(e["report"].split()) for e in entries])
    lines = [
        ", ".join(f"{s}: {len(content.get(s, []))}" for s in SPLITS) + f" studies; "
        f"{sum(len(e['image_path']) for e in entries)} images; report words mean {words.mean():.1f}, "
        f"5-95% {np.percentile(words, 5):.0f}-{np.percentile(words, 95):.0f}"
    ]
    lines.append(f"{'observation':28s} {'pos':>6s} {'unc':>6s} {'neg':>6s}")
    for i, name in enumerate(OBSERVATIONS):
        column = codes[:, i]
        pos, unc, neg = ((column == c).mean() for c in (POSITIVE, UNCERTAIN, NEGATIVE))
        lines.append(f"{name:28s} {pos:6.1%} {unc:6.1%} {neg:6.1%}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the synthetic chest X-ray world (R2Gen layout).")
    parser.add_argument("--out", required=True, help="output folder (annotation.json and images/)")
    parser.add_argument("--n", type=int, default=2000, help="number of studies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=112, help="image side in pixels")
    parser.add_argument(
        "--blank-images",
        action="store_true",
        help="the blind control: the same world, every view one flat grey",
    )
    args = parser.parse_args(argv)
    path = generate_world(
        args.out, n=args.n, seed=args.seed, image_size=args.image_size, blank_images=args.blank_images
    )
    print(f"wrote {path}")
    print(world_summary(path))


if __name__ == "__main__":
    main()
