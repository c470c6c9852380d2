"""Tests of the rule-based CheXpert-style labeler (rewards.rules) on the project's own example sentences."""

from __future__ import annotations

import numpy as np
import pytest

from rewards import phrases
from rewards.rules import RuleLabeler, clean_report, phrase_regex
from rewards.vocabulary import (
    BLANK,
    NEGATIVE,
    NO_FINDING,
    NUM_OBSERVATIONS,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
    validate_codes,
)

P, N, U, B = POSITIVE, NEGATIVE, UNCERTAIN, BLANK


@pytest.fixture(scope="module")
def labeler() -> RuleLabeler:
    return RuleLabeler()


def code_of(labeler: RuleLabeler, text: str, observation: str) -> int:
    return int(labeler.label_one(text)[OBSERVATIONS.index(observation)])


# One positive and one negative sentence for every finding (polarity pairs).
POLARITY_PAIRS = [
    ("Enlarged Cardiomediastinum", "The mediastinum is widened.", "Mediastinal contours are normal."),
    ("Cardiomegaly", "The heart is enlarged.", "No cardiomegaly."),
    ("Cardiomegaly", "Moderate cardiomegaly.", "Heart size is normal."),
    ("Lung Opacity", "Patchy opacity in the right lower lobe.", "No focal opacity."),
    ("Lung Lesion", "A 2 cm nodule in the left upper lobe.", "No suspicious pulmonary nodule or mass."),
    ("Edema", "Moderate pulmonary edema.", "No pulmonary edema."),
    ("Consolidation", "Right lower lobe consolidation.", "No focal consolidation."),
    ("Pneumonia", "Right middle lobe pneumonia.", "No evidence of pneumonia."),
    ("Atelectasis", "Bibasilar atelectasis.", "No atelectasis."),
    ("Pneumothorax", "Small right apical pneumothorax.", "No pneumothorax."),
    ("Pleural Effusion", "There is a small right pleural effusion.", "No pleural effusion."),
    ("Pleural Other", "Right apical pleural thickening.", "No pleural thickening."),
    ("Fracture", "Acute fracture of the left 6th rib.", "No acute fracture."),
    (
        "Support Devices",
        "A right-sided PICC line terminates in the SVC.",
        "Interval removal of the endotracheal tube.",
    ),
]


@pytest.mark.parametrize(("observation", "positive", "negative"), POLARITY_PAIRS)
def test_each_observation_has_positive_and_negative_polarity(labeler, observation, positive, negative):
    """Every finding is found as positive in an affirmed sentence and negative in a negated one."""
    assert code_of(labeler, positive, observation) == P
    assert code_of(labeler, negative, observation) == N


SENTENCES = [
    # pre-negation cues
    ("No pneumothorax.", "Pneumothorax", N),
    ("Small pneumothorax.", "Pneumothorax", P),
    ("Without evidence of pleural effusion.", "Pleural Effusion", N),
    ("Negative for pneumonia.", "Pneumonia", N),
    ("Lungs are free of consolidation.", "Consolidation", N),
    ("No evidence of focal airspace disease.", "Lung Opacity", N),
    ("Resolution of the left lower lobe consolidation.", "Consolidation", N),
    ("No pneumothorax is seen.", "Pneumothorax", N),
    ("There is no evidence of pneumothorax.", "Pneumothorax", N),
    # post-negation cues
    ("Heart size is within normal limits.", "Cardiomegaly", N),
    ("The cardiac silhouette is unremarkable.", "Cardiomegaly", N),
    ("The heart is not enlarged.", "Cardiomegaly", N),
    ("The left pleural effusion has resolved.", "Pleural Effusion", N),
    ("Right lower lobe opacity has cleared.", "Lung Opacity", N),
    ("The previously seen pneumothorax is no longer visualized.", "Pneumothorax", N),
    ("The endotracheal tube has been removed.", "Support Devices", N),
    ("Pneumothorax is not seen.", "Pneumothorax", N),
    # uncertainty that reads like negation
    ("Pneumonia cannot be excluded.", "Pneumonia", U),
    ("Cannot exclude a small left effusion.", "Pleural Effusion", U),
    ("Early pneumonia is not excluded.", "Pneumonia", U),
    ("A small pneumothorax cannot be ruled out.", "Pneumothorax", U),
    # uncertainty
    ("Possible small left effusion.", "Pleural Effusion", U),
    ("Findings may represent early pneumonia.", "Pneumonia", U),
    ("Opacity likely atelectasis.", "Atelectasis", U),
    ("Findings suspicious for pneumonia.", "Pneumonia", U),
    ("Concern for developing pneumonia.", "Pneumonia", U),
    ("Question of a small right pneumothorax.", "Pneumothorax", U),
    ("Atelectasis versus consolidation at the left base.", "Atelectasis", U),
    ("Atelectasis versus consolidation at the left base.", "Consolidation", U),
    ("Left basal atelectasis or pneumonia.", "Atelectasis", U),
    ("Left basal atelectasis or pneumonia.", "Pneumonia", U),
    ("Pneumonia is possible.", "Pneumonia", U),
    ("Findings are consistent with pulmonary edema.", "Edema", U),
    ("Borderline cardiomegaly.", "Cardiomegaly", U),
    ("Heart size is top normal.", "Cardiomegaly", U),
    ("Heart size at the upper limits of normal.", "Cardiomegaly", U),
    ("The heart may be mildly enlarged.", "Cardiomegaly", U),
    ("Blunting of the left costophrenic angle.", "Pleural Effusion", U),
    # stable / unchanged hedges only for heart size and mediastinum
    ("Stable heart size.", "Cardiomegaly", U),
    ("The cardiac silhouette is unchanged.", "Cardiomegaly", U),
    ("Stable cardiomediastinal silhouette.", "Enlarged Cardiomediastinum", U),
    ("Unchanged moderate cardiomegaly.", "Cardiomegaly", P),
    ("Stable small left pleural effusion.", "Pleural Effusion", P),
    ("Right IJ line unchanged in position.", "Support Devices", P),
    # MIMIC-style sentences
    ("Mild pulmonary vascular congestion without frank edema.", "Edema", U),
    ("Left basilar opacity may reflect atelectasis, though pneumonia cannot be excluded.", "Lung Opacity", P),
    ("Left basilar opacity may reflect atelectasis, though pneumonia cannot be excluded.", "Atelectasis", U),
    ("Left basilar opacity may reflect atelectasis, though pneumonia cannot be excluded.", "Pneumonia", U),
    ("Cardiomegaly without pulmonary edema.", "Cardiomegaly", P),
    ("Cardiomegaly without pulmonary edema.", "Edema", N),
    ("No definite consolidation to suggest pneumonia.", "Pneumonia", N),
    ("Endotracheal tube terminates 4 cm above the carina.", "Support Devices", P),
    ("Lines and tubes are in standard position.", "Support Devices", P),
    ("Interval increase in moderate right pleural effusion.", "Pleural Effusion", P),
    ("Mild interstitial edema has improved.", "Edema", P),
    ("Partially resolved right lower lobe pneumonia.", "Pneumonia", P),
    ("No interval change in moderate cardiomegaly.", "Cardiomegaly", P),
    ("No new consolidation.", "Consolidation", U),
    ("Old healed left rib fractures.", "Fracture", P),
    # clause boundaries stop a cue
    ("No pneumothorax, but a small left effusion is present.", "Pleural Effusion", P),
    ("No pneumothorax; small left effusion.", "Pleural Effusion", P),
    ("No pneumothorax, small left effusion.", "Pleural Effusion", P),
    ("No edema, however there is a right lower lobe consolidation.", "Consolidation", P),
    ("Possible atelectasis, although the effusion is definite.", "Pleural Effusion", P),
    ("Right effusion which may represent empyema.", "Pleural Effusion", P),
    ("The heart is enlarged, lungs are normal.", "Cardiomegaly", P),
    ("Stable mild cardiomegaly and normal lung vascularity.", "Cardiomegaly", P),
    ("The cardiac and mediastinal silhouettes are unremarkable.", "Cardiomegaly", N),
    ("The cardiac and mediastinal silhouettes are unremarkable.", "Enlarged Cardiomediastinum", N),
    # unmentions
    ("Small pericardial effusion.", "Pleural Effusion", B),
    ("Calcified nodule in the right upper lobe.", "Lung Lesion", B),
    ("Opacity projecting over the heart.", "Cardiomegaly", B),
    ("Platelike atelectasis at the left base.", "Support Devices", B),
    ("Pneumomediastinum.", "Enlarged Cardiomediastinum", B),
    ("Kerley B lines.", "Support Devices", B),
    # attribute mentions need a descriptor
    ("The heart and lungs were imaged.", "Cardiomegaly", B),
]


@pytest.mark.parametrize(("text", "observation", "expected"), SENTENCES)
def test_cue_types_classify_each_mention(labeler, text, observation, expected):
    """Each cue type (pre/post negation, negation-like uncertainty, hedges, boundaries) sets the right class."""
    assert code_of(labeler, text, observation) == expected, labeler.explain(text)


@pytest.mark.parametrize(
    "text",
    [
        "No focal consolidation, pleural effusion, or pneumothorax.",
        "No evidence of consolidation, pleural effusion or pneumothorax.",
        "Without consolidation, effusion, or pneumothorax.",
    ],
)
def test_negation_extends_over_a_coordinated_list(labeler, text):
    """One negation cue negates every member of an 'A, B, or C' list."""
    codes = labeler.label_one(text)
    for name in ("Consolidation", "Pleural Effusion", "Pneumothorax"):
        assert codes[OBSERVATIONS.index(name)] == N, (name, labeler.explain(text))


def test_heart_size_and_mediastinum_negated_together(labeler):
    """A post-negation ('are within normal limits') reaches back over 'A and B'."""
    codes = labeler.label_one("Heart size and mediastinal contours are within normal limits.")
    assert codes[OBSERVATIONS.index("Cardiomegaly")] == N
    assert codes[OBSERVATIONS.index("Enlarged Cardiomediastinum")] == N


def test_aggregation_prefers_positive_over_uncertain_over_negative(labeler):
    """Per observation: positive > uncertain > negative > blank, whatever the order of sentences."""
    assert (
        code_of(labeler, "No effusion on the right. Possible small left effusion.", "Pleural Effusion") == U
    )
    assert (
        code_of(labeler, "Possible left effusion. Definite right pleural effusion.", "Pleural Effusion") == P
    )
    assert code_of(labeler, "Large right effusion. No left effusion.", "Pleural Effusion") == P
    assert code_of(labeler, "No left effusion.", "Pleural Effusion") == N
    assert code_of(labeler, "No pneumothorax.", "Pleural Effusion") == B


def test_heart_failure_makes_blank_cardiomegaly_uncertain(labeler):
    """A positive or uncertain heart failure mention sets a blank Cardiomegaly to uncertain, not a stated one."""
    assert code_of(labeler, "Congestive heart failure.", "Cardiomegaly") == U
    assert code_of(labeler, "Findings suggest mild CHF.", "Cardiomegaly") == U
    assert code_of(labeler, "No evidence of heart failure.", "Cardiomegaly") == B
    assert code_of(labeler, "Heart failure. Heart size is normal.", "Cardiomegaly") == N
    assert code_of(labeler, "Heart failure with marked cardiomegaly.", "Cardiomegaly") == P


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No acute cardiopulmonary process.", P),
        ("1. No evidence of active disease.", P),
        ("Negative chest x-XXXX.", P),
        ("Heart size normal. Lungs are clear. No pneumothorax.", P),
        ("Right PICC line in the SVC. No acute cardiopulmonary abnormality.", P),  # devices do not count
        ("Small left effusion.", B),
        ("Possible pneumonia. Otherwise normal.", B),  # uncertain counts as abnormal
        ("Emphysema. No acute disease.", B),  # other abnormality blocks No Finding
        ("Small hiatal hernia. No acute findings.", B),
        ("Calcified granuloma in the right upper lobe. Otherwise normal.", B),
        ("No hernia. No acute disease.", P),  # a negated blocker does not block
        ("Patient name withheld.", B),  # nothing normal is said
    ],
)
def test_no_finding_rule(labeler, text, expected):
    """No Finding: positive only with a normal statement and nothing abnormal except devices; never negative."""
    assert int(labeler.label_one(text)[NO_FINDING]) == expected


def test_no_finding_blockers_can_be_switched_off():
    """With no_finding_blockers=False only the 13 findings decide No Finding (CheXbert-derived CSV rule)."""
    assert RuleLabeler(no_finding_blockers=False).label_one("Emphysema. No acute disease.")[NO_FINDING] == P


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "asdf qwerty zxcv",
        "1234 5678",
        "!!! ??? ...",
        "<think></think><report></report>",
        "\ufffd\x00",
    ],
)
def test_empty_or_garbage_input_is_all_blank(labeler, text):
    """Empty or unrelated text yields 14 blanks."""
    assert labeler.label_one(text).tolist() == [B] * NUM_OBSERVATIONS


@pytest.mark.parametrize("value", [None, 42, 3.5, b"No effusion."], ids=["None", "int", "float", "bytes"])
def test_a_report_that_is_not_a_string_is_a_type_error_naming_the_type(labeler, value):
    """None or a number is a bug upstream (a missing cell, a wrong column), not an empty report."""
    with pytest.raises(TypeError, match=type(value).__name__):
        labeler.label_one(value)
    with pytest.raises(TypeError, match=type(value).__name__):
        labeler.label(["No effusion.", value])


def test_very_long_input_does_not_crash(labeler):
    """A degenerate 300 kB generation is labeled (its length is capped; bench/labeler_speed.py times it)."""
    text = "No pneumothorax. Small left pleural effusion, possibly atelectasis or pneumonia, " * 4000
    codes = labeler.label_one(text)
    assert codes[OBSERVATIONS.index("Pleural Effusion")] == P
    assert codes[OBSERVATIONS.index("Pneumothorax")] == N


def test_label_returns_valid_int64_codes_for_a_batch(labeler):
    """label() returns an (N, 14) int64 array that passes rewards.vocabulary.validate_codes."""
    texts = ["No acute disease.", "Large right pleural effusion.", "", "Possible pneumonia."]
    codes = labeler.label(texts)
    assert codes.shape == (4, NUM_OBSERVATIONS) and codes.dtype == np.int64
    validate_codes(codes)
    assert np.array_equal(codes[2], np.zeros(NUM_OBSERVATIONS))
    assert labeler.label([]).shape == (0, NUM_OBSERVATIONS)


def test_label_rejects_a_bare_string(labeler):
    """Passing one string instead of a list is an error, not 300 one-letter reports."""
    with pytest.raises(TypeError, match="sequence of reports"):
        labeler.label("No pneumothorax.")


@pytest.mark.parametrize(
    ("raw", "observation", "expected"),
    [
        ("1. No pneumothorax. 2. Small left effusion.", "Pleural Effusion", P),
        ("1. no pneumothorax 2. small left effusion", "Pleural Effusion", P),  # numbered list, no periods
        ("No pneumothorax\n\nModerate cardiomegaly", "Cardiomegaly", P),  # blank line as a break
        ("No pneumothorax Moderate cardiomegaly", "Cardiomegaly", P),  # missing period, capital start
        ("NO PNEUMOTHORAX.", "Pneumothorax", N),  # upper case
        ("Atelectasis and/or pneumonia.", "Pneumonia", U),
        ("Atelectasis/pneumonia at the left base.", "Atelectasis", U),
        ("Atelectasis vs. pneumonia.", "Pneumonia", U),
        ("S/p removal of chest tube.", "Support Devices", N),
        ("Heart size normal.Lungs clear.", "Cardiomegaly", N),
    ],
)
def test_cleaning_handles_real_report_formatting(labeler, raw, observation, expected):
    """Numbered lists, missing punctuation, case, slashes, abbreviations and XXXX tokens are normalised."""
    assert code_of(labeler, raw, observation) == expected, (clean_report(raw), labeler.explain(raw))


def test_clean_report_normalises_deidentification_and_lists():
    """XXXX tokens become neutral words, 'x-XXXX' becomes 'x-ray', list numbers become sentence breaks."""
    cleaned = clean_report("1. Negative chest x-XXXX. 2. Stable XXXX opacity.")
    assert "x-ray" in cleaned and "xxxx opacity" in cleaned
    assert "1." not in cleaned and "2." not in cleaned
    assert clean_report("A 1.5 cm nodule") == "a 1.5 cm nodule"  # decimals are not list numbers


def test_explain_reports_mentions_with_their_class(labeler):
    """explain() lists each mention with observation, text span and class for debugging."""
    found = labeler.explain("No pneumothorax. Possible small left effusion.")
    assert [(m.observation, m.label) for m in found] == [
        ("Pneumothorax", "negative"),
        ("Pleural Effusion", "uncertain"),
    ]
    assert found[0].text == "pneumothorax"


def test_synthetic_style_phrasings_are_recovered(labeler):
    """Natural positive / negative / hedged phrasings of a report generator give their true labels."""
    report = (
        "The heart is enlarged. There is a small right pleural effusion. No pneumothorax is seen. "
        "Findings may represent early pneumonia. A right-sided PICC line terminates in the SVC."
    )
    codes = labeler.label_one(report)
    expected = {
        "Cardiomegaly": P,
        "Pleural Effusion": P,
        "Pneumothorax": N,
        "Pneumonia": U,
        "Support Devices": P,
    }
    for name, code in expected.items():
        assert codes[OBSERVATIONS.index(name)] == code, name
    others = [i for i, name in enumerate(OBSERVATIONS) if name not in expected]
    assert all(codes[i] == B for i in others)


def test_phrase_syntax_wildcards_and_word_boundaries():
    """'*' accepts word continuations, a space matches a hyphen, and a phrase starts at a word boundary."""
    import re

    assert re.search(phrase_regex("atelecta*"), "atelectatic change")
    assert re.search(phrase_regex("air space disease"), "air-space disease")
    assert not re.search(phrase_regex("line"), "midline shift")
    assert not re.search(phrase_regex("port"), "portable film")


def test_phrase_lists_cover_every_finding():
    """Every one of the 13 findings has at least one mention phrase."""
    for name in OBSERVATIONS[:NO_FINDING]:
        assert phrases.PLAIN_MENTIONS.get(name) or phrases.ATTRIBUTE_MENTIONS.get(name), name


def test_overlapping_unmentions_both_apply(labeler):
    """Unmentions may overlap: 'prior granulomatous infection' is not a pneumonia."""
    assert code_of(labeler, "No acute disease. Prior granulomatous infection.", "Pneumonia") == B


# ----------------------------------------------------------------------------------------------
# Hard cases of real (MIMIC-CXR style) impressions: polarity and hedging. Each case lists the expected
# code of the observations it is about; where CheXpert's conventions are ambiguous the choice follows
# LABELER-NOTES and is stated in a comment.
# ----------------------------------------------------------------------------------------------

_SHORT = {
    "EC": "Enlarged Cardiomediastinum",
    "CM": "Cardiomegaly",
    "LO": "Lung Opacity",
    "LL": "Lung Lesion",
    "ED": "Edema",
    "CO": "Consolidation",
    "PN": "Pneumonia",
    "AT": "Atelectasis",
    "PX": "Pneumothorax",
    "PE": "Pleural Effusion",
    "PO": "Pleural Other",
    "FX": "Fracture",
    "SD": "Support Devices",
    "NF": "No Finding",
}

HEDGED_REPORTS = [
    # "there may / could / might be X" and "X may be present"
    ("There may be a subtle opacity in the right lower lobe.", {"LO": U}),
    ("There may be a small left pleural effusion.", {"PE": U}),
    ("There could be a trace right pleural effusion.", {"PE": U}),
    ("There might be minimal bibasilar atelectasis.", {"AT": U}),
    ("There might be early interstitial edema.", {"ED": U}),
    ("A small right pneumothorax may be present.", {"PX": U}),
    ("Small bilateral pleural effusions could be present.", {"PE": U}),
    # adverbs and adjectives of doubt
    ("The mediastinal contour is questionably widened.", {"EC": U}),
    ("The heart is questionably enlarged.", {"CM": U}),
    ("The heart is equivocally enlarged.", {"CM": U}),
    ("Questionable small nodular opacity in the left upper lobe.", {"LL": U, "LO": B}),
    ("Equivocal left retrocardiac opacity.", {"LO": U}),
    ("Indeterminate opacity at the right lung base.", {"LO": U}),
    ("Mediastinal widening is equivocal.", {"EC": U}),
    ("Heart size is borderline enlarged.", {"CM": U}),
    ("Heart size is top normal.", {"CM": U}),
    ("Heart size remains at the upper limits of normal.", {"CM": U, "NF": B}),
    ("There is a possible small left apical pneumothorax.", {"PX": U}),
    ("Probable small left pleural effusion.", {"PE": U}),
    ("Suspected right lower lobe pneumonia.", {"PN": U}),
    ("Possible nondisplaced fracture of the left seventh rib.", {"FX": U}),
    ("Possible early left lower lobe pneumonia in the appropriate clinical setting.", {"PN": U}),
    # an adjective of doubt hedges its own noun phrase, not what comes "with" it
    ("Probable small bilateral pleural effusions with adjacent atelectasis.", {"PE": U, "AT": P}),
    ("Possible left lower lobe pneumonia with small effusion.", {"PN": U, "PE": P}),
    ("Right upper lobe mass with possible post-obstructive pneumonia.", {"LL": P, "PN": U}),
    ("Findings may represent pulmonary edema versus atypical infection.", {"ED": U, "PN": U}),
    ("Likely small bilateral effusions.", {"PE": U}),
    # negation-like uncertainty
    ("Cannot rule out early pneumonia.", {"PN": U}),
    ("Can't exclude a small pneumothorax.", {"PX": U}),
    ("Trace left effusion is not excluded.", {"PE": U}),
    ("A superimposed infection cannot be entirely excluded.", {"PN": U}),
    ("Cannot exclude small bilateral pleural effusions.", {"PE": U}),
    # a finding with a hedged interpretation: the finding is stated, the interpretation is uncertain
    (
        "Left basilar opacity may reflect atelectasis, though pneumonia cannot be excluded.",
        {"LO": P, "AT": U, "PN": U},
    ),
    ("Bibasilar opacities, likely atelectasis, less likely pneumonia.", {"LO": P, "AT": U, "PN": U}),
    ("Findings concerning for multifocal pneumonia.", {"PN": U}),
    ("New right upper lobe consolidation concerning for pneumonia.", {"CO": P, "PN": U}),
    ("Patchy opacity in the lingula suspicious for pneumonia.", {"LO": P, "PN": U}),
    ("Opacity in the right lower lobe could represent aspiration or pneumonia.", {"LO": P, "PN": U}),
    ("Right basilar opacity, which may be atelectasis.", {"LO": P, "AT": U}),
    ("Streaky left basilar opacity, most likely atelectasis.", {"LO": P, "AT": U}),
    ("Left lower lobe opacity is most consistent with atelectasis.", {"LO": P, "AT": U}),
    ("Retrocardiac opacity, atelectasis or consolidation.", {"LO": P, "AT": U, "CO": U}),
    (
        "Patchy bibasilar opacities, which may represent atelectasis or early infection.",
        {"LO": P, "AT": U, "PN": U},
    ),
    (
        "Persistent opacity at the left base, likely atelectasis, although infection is not excluded.",
        {"LO": P, "AT": U, "PN": U},
    ),
    (
        "Right upper lobe opacity is concerning for pneumonia in the appropriate clinical setting.",
        {"LO": P, "PN": U},
    ),
    ("Perihilar haziness may reflect mild edema.", {"LO": P, "ED": U}),
    ("Diffuse interstitial opacities compatible with edema.", {"LO": P, "ED": U}),
    ("Findings suggestive of mild interstitial edema.", {"ED": U}),
    ("Lucency at the left apex could represent a small pneumothorax.", {"PX": U}),
    ("Differential includes atelectasis and pneumonia.", {"AT": U, "PN": U}),
    ("Pneumonia is considered less likely.", {"PN": U}),
    ("Mild atelectasis in the left lower lobe is likely.", {"AT": U}),
    # "rather than" negates the rejected alternative; "favored over" keeps both open (CheXpert: "rather
    # than" is a negation cue, a preference is an uncertainty)
    ("Right middle lobe opacity likely represents atelectasis rather than pneumonia.", {"AT": U, "PN": N}),
    ("Atelectasis is favored over pneumonia.", {"AT": U, "PN": U}),
    ("Atelectasis versus scarring.", {"AT": U, "LO": U}),  # scarring is a Lung Opacity phrase
    ("Possible trace right effusion versus pleural thickening.", {"PE": U, "PO": U}),
    (
        "Blunting of the right costophrenic angle may reflect pleural thickening or small effusion.",
        {"PE": U, "PO": U},
    ),
    # a benign explanation makes the finding itself uncertain
    ("Cardiomegaly is likely exaggerated by AP technique.", {"CM": U}),
    ("Hazy opacity at the right base may relate to overlying soft tissue.", {"LO": U}),
    ("Nodular opacity in the left lower lobe, possibly a nipple shadow.", {"LL": U}),
    ("Apparent widening of the mediastinum is likely due to patient rotation.", {"EC": U}),
    # congestion suggests edema; an explicitly negated edema does not cancel it (aggregate: uncertain)
    ("Mild pulmonary vascular congestion without frank edema.", {"ED": U}),
    ("No frank pulmonary edema, though there is mild vascular congestion.", {"ED": U}),
    ("Improved pulmonary vascular congestion.", {"ED": U}),
    ("Findings consistent with congestive heart failure.", {"ED": U, "CM": U}),
    ("Hilar congestion.", {"ED": U}),
    ("Mild vascular engorgement without overt edema.", {"ED": U}),
    # "X is/are likely ..." hedges X only where the clause ends; before a noun the hedge is about the noun
    (
        "Opacities at the lung bases are likely atelectasis, but aspiration or pneumonia cannot be excluded.",
        {"LO": P, "AT": U, "PN": U},
    ),
    ("Opacity is likely due to atelectasis.", {"LO": P, "AT": U}),
    ("Pneumonia is possible given the clinical history.", {"PN": U}),
    ("Small pleural effusions are probably present.", {"PE": U}),
    # "unlikely" is kept uncertain, like "less likely" (CheXpert lists both as uncertainty, not negation)
    ("Effusion is unlikely.", {"PE": U}),
    (
        "No pneumothorax is seen on this supine view, although a small anterior pneumothorax would be "
        "difficult to exclude.",
        {"PX": U},
    ),
    (
        "Left retrocardiac opacity likely reflects atelectasis, though superimposed infection cannot be excluded.",
        {"LO": P, "AT": U, "PN": U},
    ),
    (
        "Increased opacification of the left lung base may be due to atelectasis, effusion, or consolidation.",
        {"LO": P, "AT": U, "PE": U, "CO": U},
    ),
    ("No new focal consolidation is seen.", {"CO": U}),  # CheXpert: "no new" is uncertainty
]

NEGATED_REPORTS = [
    ("Lungs are clear without focal consolidation to suggest pneumonia.", {"CO": N, "PN": N, "NF": P}),
    ("No focal consolidation concerning for pneumonia.", {"CO": N, "PN": N}),
    ("Resolution of previously seen right pleural effusion.", {"PE": N}),
    ("Interval resolution of the previously described left lower lobe consolidation.", {"CO": N}),
    ("There is no longer evidence of pneumothorax.", {"PX": N}),
    ("The previously seen left apical pneumothorax has resolved.", {"PX": N}),
    ("Without evidence of pneumothorax or large effusion.", {"PX": N, "PE": N}),
    ("No definite consolidation.", {"CO": N}),
    ("No radiographic evidence of pneumonia.", {"PN": N}),
    ("No displaced rib fracture.", {"FX": N}),
    ("No acute displaced rib fractures are identified.", {"FX": N}),
    ("Negative for acute pulmonary edema.", {"ED": N}),
    ("No evidence of pulmonary vascular congestion.", {"ED": N}),
    ("Pulmonary vascular congestion has resolved.", {"ED": N}),
    ("Pulmonary edema has resolved.", {"ED": N}),
    ("No overt pulmonary edema.", {"ED": N}),
    ("No CHF.", {"ED": N, "CM": B}),
    ("The lungs are clear of consolidation or effusion.", {"CO": N, "PE": N}),
    ("No focal airspace consolidation, effusion, or pneumothorax.", {"CO": N, "PE": N, "PX": N}),
    ("No pleural effusion, pneumothorax or pulmonary edema is seen.", {"PE": N, "PX": N, "ED": N}),
    ("There is no pulmonary edema, focal consolidation, or pneumothorax.", {"ED": N, "CO": N, "PX": N}),
    ("Lungs are clear bilaterally without consolidation, effusion or edema.", {"CO": N, "PE": N, "ED": N}),
    ("No suspicious pulmonary nodules.", {"LL": N}),
    ("Normal cardiomediastinal silhouette.", {"EC": N}),
    ("The cardiomediastinal silhouette is within normal limits.", {"EC": N}),
    ("Mediastinal and hilar contours are normal.", {"EC": N}),
    ("Cardiac silhouette size is normal.", {"CM": N}),
    ("The heart is normal in size.", {"CM": N}),
    ("The heart size appears normal.", {"CM": N}),
    ("Pneumonia is not suspected.", {"PN": N}),
    ("No convincing signs of pneumonia.", {"PN": N}),
    ("No findings to suggest pneumonia.", {"PN": N}),
    ("No opacity concerning for pneumonia.", {"LO": N, "PN": N}),
    ("No pneumothorax or displaced fracture.", {"PX": N, "FX": N}),
    ("No large pneumothorax.", {"PX": N}),
    ("The lungs are clear, and there is no pleural effusion or pneumothorax.", {"PE": N, "PX": N, "NF": P}),
    # CheXpert treats removal as a negation of the device
    ("Interval removal of the endotracheal tube.", {"SD": N}),
    ("Nasogastric tube has been removed.", {"SD": N}),
    ("The endotracheal tube has been withdrawn.", {"SD": N}),
    ("The right chest tube has been removed. No pneumothorax.", {"SD": N, "PX": N}),
    ("No residual pneumothorax after chest tube removal.", {"PX": N, "SD": N}),
    ("No evidence of pneumothorax status post right chest tube removal.", {"PX": N, "SD": N}),
    (
        "Heart size is normal. Mediastinal contours are unremarkable. Lungs are clear. "
        "No pleural effusion or pneumothorax. No acute osseous abnormality.",
        {"CM": N, "EC": N, "PE": N, "PX": N, "NF": P},
    ),
]

AFFIRMED_REPORTS = [
    ("Unchanged moderate cardiomegaly.", {"CM": P}),  # "unchanged" hedges only heart-size wording
    ("Moderate cardiomegaly, stable.", {"CM": P}),
    ("Stable enlarged heart.", {"CM": P}),
    ("Cardiac silhouette is mildly enlarged, unchanged.", {"CM": P}),
    ("The cardiac silhouette remains enlarged.", {"CM": P}),
    ("Mild enlargement of the cardiac silhouette is unchanged.", {"CM": P}),
    ("Severe cardiomegaly is again noted.", {"CM": P}),
    ("Stable appearance of the cardiomediastinal silhouette.", {"EC": U}),  # stable contour wording hedges
    ("Cardiomediastinal silhouette is stable.", {"EC": U}),
    ("The heart size is stable.", {"CM": U}),
    ("Persistent small bilateral pleural effusions.", {"PE": P}),
    ("Large left pleural effusion, unchanged.", {"PE": P}),
    ("Decreased but persistent left pleural effusion.", {"PE": P}),
    ("Small left pleural effusion has decreased in size.", {"PE": P}),
    ("Left pleural effusion is not significantly changed.", {"PE": P}),
    ("No significant change in small bilateral pleural effusions.", {"PE": P}),
    ("No right pleural effusion. Left effusion is small.", {"PE": P}),
    ("Moderate to severe pulmonary edema has improved.", {"ED": P}),  # improved is still present
    ("Mild pulmonary edema, slightly improved from prior.", {"ED": P}),
    ("Slightly improved but persistent right lower lobe consolidation.", {"CO": P}),
    ("Without interval change in left lower lobe consolidation.", {"CO": P}),
    ("Interval development of a moderate right pleural effusion.", {"PE": P}),
    ("Tiny left apical pneumothorax is unchanged.", {"PX": P}),
    ("Small left apical pneumothorax is slightly smaller.", {"PX": P}),
    ("Interval placement of a left chest tube with decrease in left pneumothorax.", {"SD": P, "PX": P}),
    ("Moderate right pneumothorax with leftward mediastinal shift.", {"PX": P, "EC": B}),
    ("No evidence of acute fracture; old healed left rib fractures.", {"FX": P}),  # old fractures count
    ("Old right rib fractures are again noted.", {"FX": P}),
    ("Healed right clavicle fracture.", {"FX": P}),
    ("Redemonstrated right upper lobe mass.", {"LL": P}),
    ("A 1 cm nodule in the right upper lobe is new and could represent malignancy.", {"LL": P}),
    ("Left lower lobe collapse.", {"AT": P}),
    ("Subsegmental atelectasis at the left base, no focal consolidation.", {"AT": P, "CO": N}),
    ("Mild bibasilar atelectasis without focal consolidation.", {"AT": P, "CO": N}),
    ("No effusion, but there is mild bibasilar atelectasis.", {"PE": N, "AT": P}),
    ("Right basilar atelectasis is seen, and there is no pneumothorax.", {"AT": P, "PX": N}),
    ("Normal heart size with mild pulmonary edema.", {"CM": N, "ED": P}),
    (
        "Mild cardiomegaly with pulmonary vascular congestion and small bilateral effusions.",
        {"CM": P, "ED": U, "PE": P},
    ),
    ("Cardiomegaly and pulmonary edema, consistent with CHF.", {"CM": P, "ED": P}),
    ("Biapical pleural thickening.", {"PO": P}),
    ("Fracture of the right clavicle, possibly acute.", {"FX": P}),  # the acuity is hedged, not the fracture
    ("Right lower lobe pneumonia, not significantly changed.", {"PN": P}),
    ("Heart size is mildly enlarged but unchanged.", {"CM": P}),
    ("There is mild bibasilar atelectasis, but no focal consolidation.", {"AT": P, "CO": N}),
    (
        "Bilateral pleural effusions, right greater than left, with associated compressive atelectasis.",
        {"PE": P, "AT": P},
    ),
    ("No evidence of pneumonia or pulmonary edema. Mild cardiomegaly.", {"PN": N, "ED": N, "CM": P}),
    ("Status post CABG with intact sternal wires.", {"SD": P}),
    # devices: placement, position and repositioning are all present devices
    ("Right IJ catheter tip in the cavoatrial junction. No pneumothorax.", {"SD": P, "PX": N, "NF": P}),
    ("Tip of the right IJ line projects over the SVC.", {"SD": P}),
    ("Enteric tube courses below the diaphragm.", {"SD": P}),
    ("Median sternotomy wires are intact.", {"SD": P}),
    ("Left-sided pacemaker with leads in the right atrium and right ventricle.", {"SD": P}),
    ("Interval placement of a right IJ central venous catheter.", {"SD": P}),
    ("Endotracheal tube has been withdrawn and now terminates 4 cm above the carina.", {"SD": P}),
    ("The endotracheal tube was withdrawn by 2 cm.", {"SD": P}),
    ("Unchanged position of the endotracheal tube.", {"SD": P}),
    ("Interval removal of the right PICC line; left chest tube remains in place.", {"SD": P}),
    ("Chest tube in place with no residual pneumothorax.", {"SD": P, "PX": N}),
    (
        "1. Moderate right pleural effusion with adjacent atelectasis, cannot exclude superimposed pneumonia. "
        "2. Mild pulmonary vascular congestion. 3. Right PICC terminates in the low SVC.",
        {"PE": P, "AT": P, "PN": U, "ED": U, "SD": P},
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    HEDGED_REPORTS + NEGATED_REPORTS + AFFIRMED_REPORTS,
    ids=lambda v: v[:60] if isinstance(v, str) else None,
)
def test_real_report_polarity_and_hedging(labeler, text, expected):
    """Hedged, negated and affirmed MIMIC-style statements get the radiologist's class per observation."""
    codes = labeler.label_one(text)
    got = {short: int(codes[OBSERVATIONS.index(_SHORT[short])]) for short in expected}
    assert got == expected, labeler.explain(text)


@pytest.mark.parametrize(
    ("text", "no_finding"),
    [
        ("No acute cardiopulmonary process.", P),
        ("No significant change.", P),  # nothing is asserted; CheXbert's derived No Finding is 1 here
        ("The lungs are well expanded and clear.", P),
        ("Low lung volumes with bronchovascular crowding.", B),  # no finding, but nothing normal is said
        ("Hyperinflated lungs consistent with emphysema.", B),  # an outside abnormality blocks No Finding
        ("Lungs are hyperinflated but clear.", B),
        ("Elevated left hemidiaphragm. No acute process.", B),
    ],
)
def test_statements_without_findings_leave_all_findings_blank(labeler, text, no_finding):
    """Normal or non-finding statements give 13 blank findings; No Finding follows its own rule."""
    codes = labeler.label_one(text)
    assert codes[:NO_FINDING].tolist() == [B] * NO_FINDING, labeler.explain(text)
    assert int(codes[NO_FINDING]) == no_finding


# ----------------------------------------------------------------------------------------------
# Multi-sentence MIMIC-style impressions (second robustness pass): change language, mixed-polarity lists,
# devices, heart and mediastinum wording, the edema spectrum, sentence-scope hedges, pleural other and
# No Finding. Each case lists the expected code of the observations it mentions.
# ----------------------------------------------------------------------------------------------

MULTI_SENTENCE_REPORTS = [
    # change language
    (
        "Increased right lower lobe opacity, concerning for pneumonia. Small right pleural effusion.",
        {"LO": P, "PN": U, "PE": P},
    ),
    ("Decreased left pleural effusion. Persistent left basilar atelectasis.", {"PE": P, "AT": P}),
    ("Interval improvement in pulmonary edema. Moderate cardiomegaly is unchanged.", {"ED": P, "CM": P}),
    (
        "Worsening bilateral airspace opacities. Endotracheal tube terminates 4 cm above the carina.",
        {"LO": P, "SD": P},
    ),
    ("New left lower lobe consolidation. No pneumothorax.", {"CO": P, "PX": N}),
    # resolving / improving / decreased findings are still present (positive); resolved ones are negative
    ("Resolving right upper lobe pneumonia. No new consolidation.", {"PN": P, "CO": U}),
    ("Right pleural effusion is slightly improved but persists.", {"PE": P}),
    ("No significant interval change in the moderate right pleural effusion.", {"PE": P}),
    ("Previously seen left lower lobe opacity has resolved. Lungs are clear.", {"LO": N}),
    (
        "The previously noted right pneumothorax has resolved. Right chest tube has been removed.",
        {"PX": N, "SD": N},
    ),
    ("Interval resolution of pulmonary edema. Heart size remains mildly enlarged.", {"ED": N, "CM": P}),
    (
        "Slight interval increase in size of small bilateral pleural effusions with adjacent bibasilar atelectasis.",
        {"PE": P, "AT": P},
    ),
    ("Improved aeration of the left lung base with decreasing atelectasis.", {"AT": P}),
    (
        "Mild pulmonary edema has improved since the prior study. Stable small left effusion.",
        {"ED": P, "PE": P},
    ),
    ("Unchanged moderate right pleural effusion and adjacent compressive atelectasis.", {"PE": P, "AT": P}),
    ("Left lower lobe collapse has resolved. There is no pleural effusion.", {"AT": N, "PE": N}),
    ("Interval worsening of right basilar consolidation, likely pneumonia.", {"CO": P, "PN": U}),
    ("Progression of multifocal consolidation, consistent with worsening pneumonia.", {"CO": P, "PN": U}),
    # mixed lists
    ("Small left effusion; no pneumothorax; stable cardiomegaly.", {"PE": P, "PX": N, "CM": P}),
    ("No pneumothorax, though there is a small left apical pleural thickening.", {"PX": N, "PO": P}),
    (
        "No focal consolidation, pleural effusion or pneumothorax. Mild cardiomegaly.",
        {"CO": N, "PE": N, "PX": N, "CM": P},
    ),
    ("Bibasilar atelectasis; no edema; no effusion.", {"AT": P, "ED": N, "PE": N}),
    (
        "No pneumothorax. Small right pleural effusion, new since prior. Mild bibasilar atelectasis.",
        {"PX": N, "PE": P, "AT": P},
    ),
    (
        "Moderate cardiomegaly, no pulmonary edema, and small bilateral pleural effusions.",
        {"CM": P, "ED": N, "PE": P},
    ),
    ("No edema, but there is a new right lower lobe opacity.", {"ED": N, "LO": P}),
    (
        "Lungs are clear without consolidation or effusion, and the heart size is normal.",
        {"CO": N, "PE": N, "CM": N, "NF": P},
    ),
    # devices
    ("ET tube terminates 4 cm above the carina. NG tube courses below the diaphragm.", {"SD": P}),
    ("Dobhoff tube courses below the diaphragm with tip out of view.", {"SD": P}),
    (
        "Median sternotomy wires and mediastinal clips are noted. No acute cardiopulmonary process.",
        {"SD": P, "EC": B},
    ),
    (
        "Dual-lead pacemaker with leads in the right atrium and right ventricle. Heart size is normal.",
        {"SD": P, "CM": N},
    ),
    ("Left chest wall port with catheter tip in the cavoatrial junction. Lungs are clear.", {"SD": P}),
    ("No lines or tubes. Lungs are clear.", {"SD": N, "NF": P}),
    (
        "Right internal jugular central venous catheter tip in the mid SVC. No pneumothorax.",
        {"SD": P, "PX": N},
    ),
    (
        "Interval placement of a left-sided chest tube with decrease in size of the left pneumothorax.",
        {"SD": P, "PX": P},
    ),
    ("Enteric tube tip is in the stomach. Mild bibasilar atelectasis.", {"SD": P, "AT": P}),
    ("Tracheostomy tube in place. Unchanged small left pleural effusion.", {"SD": P, "PE": P}),
    # heart / mediastinum
    (
        "Heart size is normal. Lungs are clear. No pleural effusion or pneumothorax.",
        {"CM": N, "PE": N, "PX": N, "NF": P},
    ),
    ("Mild cardiomegaly is unchanged. No pulmonary edema.", {"CM": P, "ED": N}),
    ("The cardiac silhouette is enlarged but stable. No focal consolidation.", {"CM": P, "CO": N}),
    # a benign explanation (vessels, tortuous aorta) offered for widening makes it uncertain, not positive
    ("Mediastinal widening likely due to vascular structures.", {"EC": U}),
    ("Cardiomediastinal contours are within normal limits. Lungs are clear.", {"EC": N, "NF": P}),
    ("Stable mild enlargement of the cardiac silhouette. Lungs are clear.", {"CM": P}),
    ("The heart is mildly enlarged. Mediastinal contours are unremarkable.", {"CM": P, "EC": N}),
    ("Unchanged widening of the mediastinum, likely due to tortuous aorta.", {"EC": U}),
    # edema
    ("Mild interstitial edema. Small bilateral pleural effusions.", {"ED": P, "PE": P}),
    ("Pulmonary vascular congestion without overt pulmonary edema.", {"ED": U}),
    ("No overt pulmonary edema. Heart size is top normal.", {"ED": N, "CM": U}),
    # cephalization and fluid overload are congestion language: uncertain Edema unless edema is stated
    ("Cephalization of the pulmonary vasculature, suggesting fluid overload.", {"ED": U}),
    (
        "Cardiomegaly with mild pulmonary edema and small bilateral effusions, consistent with fluid overload.",
        {"CM": P, "ED": P, "PE": P},
    ),
    ("Moderate pulmonary edema, slightly worse than prior.", {"ED": P}),
    # a hedged heart failure makes a blank Cardiomegaly uncertain (LABELER-NOTES step 4)
    ("Findings suggest mild congestive heart failure.", {"ED": U, "CM": U}),
    # hedges
    ("Findings could represent aspiration or pneumonia.", {"PN": U}),
    (
        "Right basilar opacity. Atelectasis is favored, although infection is not excluded.",
        {"LO": P, "AT": U, "PN": U},
    ),
    (
        "Left retrocardiac opacity. Differential includes atelectasis and pneumonia.",
        {"LO": P, "AT": U, "PN": U},
    ),
    (
        "Patchy right lower lobe opacity. Clinical correlation for pneumonia is recommended.",
        {"LO": P, "PN": U},
    ),
    (
        "The left costophrenic angle is excluded from the field of view; a small effusion cannot be assessed.",
        {"PE": U},
    ),
    ("A small left effusion may be obscured by the overlying pacemaker.", {"PE": U, "SD": P}),
    (
        "Bibasilar opacities may reflect atelectasis, though pneumonia cannot be excluded.",
        {"LO": P, "AT": U, "PN": U},
    ),
    ("Opacity at the right base could reflect atelectasis or early pneumonia.", {"LO": P, "AT": U, "PN": U}),
    (
        "Hazy opacity in the left lower lung, which may represent pneumonia in the appropriate clinical setting.",
        {"LO": P, "PN": U},
    ),
    ("Subtle left basilar opacity may represent atelectasis or aspiration.", {"LO": P, "AT": U}),
    # pleural other
    ("Bilateral apical pleural thickening. Lungs otherwise clear.", {"PO": P}),
    # blunting of the costophrenic angle is an uncertain effusion (CheXpert convention, LABELER-NOTES)
    (
        "Blunting of the right costophrenic angle, which may reflect a small effusion or pleural thickening.",
        {"PE": U},
    ),
    ("Apical pleural cap on the left. No pneumothorax.", {"PO": P, "PX": N}),
    ("Blunting of the left costophrenic angle is unchanged.", {"PE": U}),
    ("Calcified pleural plaques consistent with prior asbestos exposure.", {"PO": P}),
    # no finding
    ("No acute cardiopulmonary process.", {"NF": P}),
    ("Normal chest radiograph.", {"NF": P}),
    ("No acute cardiopulmonary abnormality. Heart size is normal.", {"NF": P, "CM": N}),
    ("No acute intrathoracic process.", {"NF": P}),
    # a device named as the cause of an obscured view is present, not in doubt
    ("Left lower lobe opacity is obscured by the overlying pacemaker generator.", {"LO": P, "SD": P}),
    # Kerley lines, like vascular congestion, suggest but do not prove edema (hedged Edema, LABELER-NOTES)
    ("Kerley B lines and peribronchial cuffing, consistent with interstitial edema.", {"ED": U, "LO": P}),
    (
        "Perihilar haziness and vascular indistinctness likely reflect mild pulmonary edema.",
        {"ED": U, "LO": P},
    ),
    (
        "Bilateral pleural effusions have decreased in size. Bibasilar atelectasis is improved.",
        {"PE": P, "AT": P},
    ),
    ("The right pleural effusion is smaller, now small.", {"PE": P}),
    ("Near complete resolution of the right lower lobe pneumonia.", {"PN": P}),
    ("Complete resolution of right lower lobe pneumonia.", {"PN": N}),
    ("Right lower lobe pneumonia has cleared. No effusion.", {"PN": N, "PE": N}),
    ("No longer seen is the left apical pneumothorax.", {"PX": N}),
    ("Removal of the nasogastric tube. Otherwise no change.", {"SD": N}),
    ("Interval extubation. No pneumothorax.", {"PX": N}),
    (
        "No evidence of pneumonia. Chronic blunting of the right costophrenic angle likely reflects pleural thickening.",
        {"PN": N, "PE": U},
    ),
    (
        "Mild bibasilar opacities, likely atelectasis, although aspiration or early pneumonia is possible.",
        {"LO": P, "AT": U, "PN": U},
    ),
    ("Atelectasis versus consolidation at the left base.", {"AT": U, "CO": U}),
    ("Consolidation in the right lower lobe worrisome for pneumonia.", {"CO": P, "PN": U}),
    ("Right lower lobe pneumonia.", {"PN": P}),
    ("Multifocal pneumonia, worse on the left.", {"PN": P}),
    ("Low lung volumes. No definite focal consolidation to suggest pneumonia.", {"CO": N, "PN": N}),
    ("Lungs are hyperinflated. No acute cardiopulmonary process.", {"NF": B}),
    ("Normal chest radiograph. No pneumothorax.", {"NF": P, "PX": N}),
    (
        "There is no focal consolidation, pleural effusion, or pneumothorax. The cardiomediastinal silhouette is normal.",
        {"CO": N, "PE": N, "PX": N, "EC": N, "NF": P},
    ),
    (
        "The heart is normal in size. The mediastinal and hilar contours are within normal limits.",
        {"CM": N, "EC": N},
    ),
    ("Moderate enlargement of the cardiac silhouette is similar to prior.", {"CM": P}),
    ("Cardiac silhouette size is difficult to assess given the AP technique.", {"CM": U}),
    ("Severe cardiomegaly, stable. Sternotomy wires are intact.", {"CM": P, "SD": P}),
    ("Nasogastric tube has been advanced and now terminates in the stomach.", {"SD": P}),
    ("The endotracheal tube has been pulled back and terminates 3 cm above the carina.", {"SD": P}),
    ("Right PICC has been removed. Left IJ line remains in place.", {"SD": P}),
    ("Small left apical pneumothorax is slightly smaller. Left chest tube in place.", {"PX": P, "SD": P}),
    ("Trace right pneumothorax, decreased from prior.", {"PX": P}),
    ("No residual pneumothorax after chest tube removal.", {"PX": N, "SD": N}),
    ("Pleural effusions are small, if present.", {"PE": U}),
    ("No large pleural effusion. Small effusion cannot be excluded.", {"PE": U}),
    ("No pleural effusion is seen, although the left costophrenic angle is not fully included.", {"PE": N}),
    ("Likely small bilateral pleural effusions.", {"PE": U}),
    ("Lungs are clear except for minimal left basilar atelectasis.", {"AT": P}),
    ("Minimal left basilar atelectasis, otherwise clear lungs.", {"AT": P}),
    ("Severe pulmonary edema is slightly improved compared to yesterday, but persists.", {"ED": P}),
    ("Mild fluid overload without frank edema.", {"ED": U}),
    ("Mild pulmonary vascular congestion. No focal consolidation.", {"ED": U, "CO": N}),
    ("Findings concerning for new right upper lobe pneumonia; recommend follow-up to resolution.", {"PN": U}),
    ("Right upper lobe mass, concerning for malignancy.", {"LL": P}),
    (
        "Nodular opacity in the left upper lobe could represent a nipple shadow; repeat with nipple markers recommended.",
        {"LL": U},
    ),
    # old / healed fractures are still Fracture mentions (CheXpert labels them positive)
    ("Healed right rib fractures. No acute fracture.", {"FX": P}),
    ("Old healed left clavicle fracture.", {"FX": P}),
    ("Possible right rib fracture; dedicated rib series may be obtained.", {"FX": U}),
    ("Pneumonia is less likely.", {"PN": U}),
    ("Pleural thickening at the right base is stable. No effusion.", {"PO": P, "PE": N}),
    ("No interval change. Small bilateral effusions persist.", {"PE": P}),
    # "no new X" is uncertainty phrased as negation (LABELER-NOTES step 3a)
    ("No new consolidation. Unchanged right basilar atelectasis.", {"CO": U, "AT": P}),
    ("Heart size is enlarged but unchanged. Mild interstitial edema has improved.", {"CM": P, "ED": P}),
    ("Possible mild pulmonary edema versus atypical infection.", {"ED": U, "PN": U}),
    (
        "There is increased opacification of the left lower lobe, consistent with atelectasis or consolidation.",
        {"LO": P, "AT": U, "CO": U},
    ),
    ("The lungs are clear. Heart size is upper normal. No pleural effusion.", {"CM": U, "PE": N}),
    (
        "1. Interval increase in moderate right pleural effusion. 2. Right basilar opacity likely reflects compressive atelectasis, though superimposed pneumonia cannot be excluded.",
        {"PE": P, "LO": P, "AT": U, "PN": U},
    ),
    (
        "Compared to prior, there is improved aeration at the left base. Residual small left effusion.",
        {"PE": P},
    ),
    (
        "AP portable chest radiograph demonstrates the endotracheal tube 5 cm above the carina. Lungs demonstrate diffuse bilateral opacities compatible with ARDS.",
        {"SD": P, "LO": P},
    ),
    (
        "Interval removal of the right IJ central line. No pneumothorax. Stable mild cardiomegaly with mild pulmonary vascular congestion.",
        {"SD": N, "PX": N, "CM": P, "ED": U},
    ),
    (
        "The lungs are hyperexpanded but clear. No focal consolidation, effusion, or pneumothorax. Heart size normal.",
        {"CO": N, "PE": N, "PX": N, "CM": N, "NF": B},
    ),
    ("Heart size normal. Lungs clear.", {"CM": N, "NF": P}),
    (
        "Persistent opacification of the left lower lobe with air bronchograms, concerning for pneumonia.",
        {"LO": P, "PN": U},
    ),
    (
        "Increased interstitial markings which may reflect mild interstitial edema or atypical infection.",
        {"LO": P, "ED": U, "PN": U},
    ),
    ("There has been interval development of a small left pleural effusion.", {"PE": P}),
    ("Small bilateral pleural effusions, left greater than right, slightly decreased.", {"PE": P}),
    ("Moderate pulmonary edema is improving.", {"ED": P}),
    (
        "Lines and tubes are in standard position. Worsening right lower lobe consolidation.",
        {"SD": P, "CO": P},
    ),
    ("There is no pneumothorax or large effusion. A small effusion is possible.", {"PX": N, "PE": U}),
    (
        "Swan-Ganz catheter tip in the right pulmonary artery. Sternal wires intact. Mediastinal drains in place.",
        {"SD": P, "EC": B},
    ),
    ("Left chest tube remains in place with no residual pneumothorax.", {"SD": P, "PX": N}),
    ("Possible trace left apical pneumothorax, unchanged from prior.", {"PX": U}),
    ("The heart size remains enlarged. Pulmonary edema has essentially resolved.", {"CM": P, "ED": N}),
    ("No acute cardiopulmonary process. Stable mild cardiomegaly.", {"CM": P, "NF": B}),
    ("Mildly enlarged cardiac silhouette, likely accentuated by low lung volumes.", {"CM": U}),
    ("Elevation of the right hemidiaphragm with adjacent atelectasis.", {"AT": P}),
    ("No radiographic evidence of pneumonia.", {"PN": N, "NF": P}),
    ("Pneumonia is not excluded in the right lower lobe.", {"PN": U}),
    (
        "Right lower lobe opacity, which could be atelectasis, aspiration, or pneumonia.",
        {"LO": P, "AT": U, "PN": U},
    ),
    ("There is no evidence of free air beneath the diaphragm. Nasogastric tube in the stomach.", {"SD": P}),
    ("Cardiomegaly is accentuated by the AP technique. No overt edema.", {"CM": P, "ED": N}),
    (
        "Severe cardiomegaly. No definite superimposed pneumonia, though evaluation is limited by body habitus.",
        {"CM": P, "PN": N},
    ),
    ("Streaky bibasilar opacities most consistent with atelectasis.", {"LO": P, "AT": U}),
    ("Minimal bibasilar atelectasis. Otherwise, no acute cardiopulmonary abnormality.", {"AT": P, "NF": B}),
    ("No pleural effusion or pneumothorax is seen. Mild pulmonary edema.", {"PE": N, "PX": N, "ED": P}),
    ("Loculated right pleural effusion, unchanged. Right basilar pleural thickening.", {"PE": P, "PO": P}),
    ("Tiny left pneumothorax has decreased in size.", {"PX": P}),
    ("Right pneumothorax is no longer visualized.", {"PX": N}),
    (
        "Patchy opacities in both lungs are concerning for multifocal pneumonia in the setting of fever.",
        {"LO": P, "PN": U},
    ),
    ("Right middle lobe pneumonia has improved but not resolved.", {"PN": P}),
    # an enlarged silhouette explained as possible pericardial effusion is an uncertain cardiomegaly
    ("Enlarged cardiac silhouette may be due to pericardial effusion or cardiomegaly.", {"CM": U, "PE": B}),
    ("Widened mediastinum; recommend CT to exclude aortic injury.", {"EC": P}),
    (
        "Prominent hila likely represent pulmonary arterial hypertension rather than lymphadenopathy.",
        {"EC": N},
    ),
    (
        "The left-sided pacemaker leads terminate in the right atrium and right ventricle, unchanged.",
        {"SD": P},
    ),
    (
        "No evidence of pneumonia or pulmonary edema. Small left pleural effusion and left basilar atelectasis are new.",
        {"PN": N, "ED": N, "PE": P, "AT": P},
    ),
    (
        "No focal consolidation to suggest pneumonia. Mild cardiomegaly without pulmonary edema.",
        {"CO": N, "PN": N, "CM": P, "ED": N},
    ),
    (
        "Lungs are clear without focal consolidation. Mild cardiomegaly. No effusion.",
        {"CO": N, "CM": P, "PE": N},
    ),
    # nearly / partially resolved findings are still present
    ("Right lung base opacity has nearly resolved.", {"LO": P}),
    ("Resolved left pneumothorax. Left chest tube has been removed.", {"PX": N, "SD": N}),
    ("New right PICC line terminates in the low SVC. No other change.", {"SD": P}),
    ("Persistent right upper lobe collapse due to mucus plugging.", {"AT": P}),
    ("Right lower lobe atelectasis secondary to elevated hemidiaphragm.", {"AT": P}),
    (
        "Stable appearance of the chest with bilateral pleural effusions and bibasilar consolidation.",
        {"PE": P, "CO": P},
    ),
    (
        "Moderate pulmonary edema with bilateral effusions, increased from prior, which could mask an underlying pneumonia.",
        {"ED": P, "PE": P, "PN": U},
    ),
    # congestion stays an uncertain Edema even beside a negated edema (positive > uncertain > negative)
    ("Mild vascular congestion has improved. No edema.", {"ED": U}),
    ("Mild interstitial pulmonary edema, new since the prior exam.", {"ED": P}),
    (
        "No evidence of acute cardiopulmonary disease. Tiny calcified granuloma in the right upper lobe.",
        {"NF": B, "LL": B},
    ),
    ("Heart is upper limits of normal in size.", {"CM": U}),
    (
        "Ill-defined opacity in the right lower lobe, possibly atelectasis, although early pneumonia is a consideration.",
        {"LO": P, "AT": U, "PN": U},
    ),
    # a limited assessment of a structure is uncertainty about it
    ("The patient is rotated, limiting assessment of the mediastinum.", {"EC": U}),
    ("Bilateral perihilar opacities may represent edema or infection.", {"LO": P, "ED": U, "PN": U}),
    ("Pleural effusion is unlikely.", {"PE": U}),
    ("Aspiration pneumonia in the right lower lobe.", {"PN": P}),
    ("Right sided pleural effusion and overlying atelectasis have decreased.", {"PE": P, "AT": P}),
    ("The feeding tube has been removed. Endotracheal tube remains in standard position.", {"SD": P}),
    ("No displaced rib fracture identified.", {"FX": N}),
    ("Scattered linear opacities suggestive of scarring or atelectasis.", {"LO": P, "AT": U}),
    ("Unchanged small left pneumothorax with pigtail catheter in place.", {"PX": P, "SD": P}),
    ("Large right pleural effusion with underlying collapse of the right lower lobe.", {"PE": P, "AT": P}),
    ("Since the prior study, the right pleural effusion has increased and is now moderate.", {"PE": P}),
    ("Left lower lobe consolidation is again seen, not significantly changed.", {"CO": P}),
    ("The cardiac silhouette remains moderately enlarged.", {"CM": P}),
    ("There is mild pulmonary vascular engorgement without frank interstitial edema.", {"ED": U}),
    ("Previously described right middle lobe nodule is not seen on the current exam.", {"LL": N}),
    ("No convincing signs of pneumonia.", {"PN": N}),
    ("Equivocal small right pleural effusion versus pleural thickening.", {"PE": U, "PO": U}),
    ("Small left pleural effusion is likely present.", {"PE": U}),
    ("The right costophrenic angle is sharp. No effusion.", {"PE": N}),
    (
        "Subsegmental atelectasis in the lingula, unchanged. No evidence of pneumothorax or edema.",
        {"AT": P, "PX": N, "ED": N},
    ),
    ("The ET tube is 2 cm above the carina and could be withdrawn 2 cm.", {"SD": P}),
    (
        "Left PICC tip at the cavoatrial junction. Heart size and mediastinal contours are normal.",
        {"SD": P, "CM": N, "EC": N},
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), MULTI_SENTENCE_REPORTS, ids=lambda v: v[:60] if isinstance(v, str) else None
)
def test_multi_sentence_impressions_keep_polarity_per_observation(labeler, text, expected):
    """Change language, mixed lists, devices and sentence-scope hedges give the radiologist's class."""
    codes = labeler.label_one(text)
    got = {short: int(codes[OBSERVATIONS.index(_SHORT[short])]) for short in expected}
    assert got == expected, labeler.explain(text)
