"""RewardCombiner: weighted total, per-term outputs, label caching per study, and clear configuration errors."""

import numpy as np
import pytest

from rewards.combine import PAPER_WEIGHTS, RewardCombiner, RewardOutput
from rewards.mccs import mccs_from_codes
from rewards.vocabulary import NEGATIVE, OBSERVATIONS, POSITIVE

EFFUSION = OBSERVATIONS.index("Pleural Effusion")
CARDIOMEGALY = OBSERVATIONS.index("Cardiomegaly")


class KeywordLabeler:
    """A stand-in labeler: 'effusion' / 'cardiomegaly' positive, or negative after 'no '; records its inputs."""

    def __init__(self):
        self.seen: list[str] = []

    def label(self, texts):
        self.seen.extend(texts)
        codes = np.zeros((len(texts), len(OBSERVATIONS)), dtype=np.int64)
        for i, text in enumerate(texts):
            lowered = text.lower()
            for column, word in ((EFFUSION, "effusion"), (CARDIOMEGALY, "cardiomegaly")):
                if f"no {word}" in lowered:
                    codes[i, column] = NEGATIVE
                elif word in lowered:
                    codes[i, column] = POSITIVE
        return codes


def wrap(report, think="look at the image"):
    return f"<think>{think}</think><report>{report}</report>"


def test_paper_weights_total_is_weighted_sum_of_terms():
    labeler = KeywordLabeler()
    combiner = RewardCombiner(PAPER_WEIGHTS, labeler=labeler)
    completions = [
        wrap("Effusion. No cardiomegaly."),
        "Effusion. Cardiomegaly.",
        wrap("No effusion.", think=""),
    ]
    refs = ["Small effusion. No cardiomegaly."] * 3
    out = combiner(completions, refs, ["s1"] * 3)
    assert isinstance(out, RewardOutput)
    assert out.total.dtype == np.float32 and out.total.shape == (3,)
    assert list(out.terms) == ["mccs", "format"]
    assert out.terms["format"].tolist() == [1.0, 0.0, 0.5]
    # z_ref = (+1 effusion, -1 cardiomegaly): identical, orthogonal ((1,1)), reversed on effusion only (-1, 0)
    assert out.terms["mccs"] == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)
    expected = 0.75 * out.terms["mccs"] + 0.25 * out.terms["format"]
    assert out.total == pytest.approx(expected)
    assert out.report_texts == ["Effusion. No cardiomegaly.", "Effusion. Cardiomegaly.", "No effusion."]


def test_mccs_term_uses_margin_and_blank_match():
    labeler = KeywordLabeler()
    refs, keys = ["Effusion."], ["a"]
    pred = [wrap("Effusion. Cardiomegaly.")]  # CCS = 1 / sqrt 2
    plain = RewardCombiner({"mccs": 1.0}, labeler=labeler, margin=0.5)(pred, refs, keys)
    expected = mccs_from_codes(labeler.label(["Effusion. Cardiomegaly."]), labeler.label(refs), margin=0.5)
    assert plain.terms["mccs"] == pytest.approx(expected)
    blank = [wrap("Nothing to see.")]
    assert RewardCombiner({"mccs": 1.0}, labeler=labeler)(blank, ["Clear."], ["b"]).total.tolist() == [0.0]
    matched = RewardCombiner({"mccs": 1.0}, labeler=labeler, blank_match=True)(blank, ["Clear."], ["b"])
    assert matched.total.tolist() == [1.0]


def test_each_reference_is_labeled_once_across_calls():
    labeler = KeywordLabeler()
    combiner = RewardCombiner({"mccs": 0.75, "format": 0.25, "cef1": 0.0}, labeler=labeler)
    group = 4
    for step in range(3):
        keys = ["s1"] * group + ["s2"] * group
        refs = ["No effusion."] * group + ["Cardiomegaly."] * group
        completions = [wrap(f"Effusion {step}-{j}.") for j in range(2 * group)]
        combiner(completions, refs, keys)
    assert labeler.seen.count("No effusion.") == 1
    assert labeler.seen.count("Cardiomegaly.") == 1
    assert len(combiner._reference_labels) == 2  # the two references, labeled once, kept


def test_each_distinct_report_is_labeled_once_per_call_for_both_label_terms():
    labeler = KeywordLabeler()
    combiner = RewardCombiner({"mccs": 1.0, "cef1": 1.0}, labeler=labeler)
    completions = [wrap("Effusion."), wrap("Effusion.", think="other"), wrap("No effusion.")]
    out = combiner(completions, ["Effusion."] * 3, ["k"] * 3)
    # the two distinct reports once, then the reference once
    assert labeler.seen == ["Effusion.", "No effusion.", "Effusion."]
    assert out.terms["cef1"].tolist() == [1.0, 1.0, 0.0]


def test_zero_weight_term_is_reported_but_does_not_count():
    labeler = KeywordLabeler()
    out = RewardCombiner({"format": 1.0, "cef1": 0.0}, labeler=labeler)(
        [wrap("Effusion.")], ["No effusion."], [1]
    )
    assert out.terms["cef1"].tolist() == [0.0]
    assert out.total.tolist() == [1.0]


def test_nlg_term_scores_the_extracted_report():
    train = ["No pleural effusion.", "Mild cardiomegaly.", "Lungs are clear."]
    combiner = RewardCombiner({"nlg": 1.0}, nlg_train_references=train)
    out = combiner([wrap("Mild cardiomegaly."), wrap("Rib fracture")], ["Mild cardiomegaly."] * 2, ["a", "a"])
    assert out.terms["nlg"][0] > 2.0 and out.terms["nlg"][1] < 1e-6


def test_unknown_term_lists_known_ones():
    with pytest.raises(ValueError, match="unknown reward term.*'bleu'.*mccs, format, cef1, nlg"):
        RewardCombiner({"bleu": 1.0})


def test_terms_without_their_inputs_are_clear_errors():
    with pytest.raises(ValueError, match=r"\['mccs'\] need a labeler"):
        RewardCombiner(PAPER_WEIGHTS)
    with pytest.raises(ValueError, match="'nlg' needs nlg_train_references"):
        RewardCombiner({"nlg": 1.0})
    with pytest.raises(ValueError, match="margin"):
        RewardCombiner({"mccs": 1.0}, labeler=KeywordLabeler(), margin=1.0)
    with pytest.raises(ValueError, match="non-empty mapping"):
        RewardCombiner({})
    with pytest.raises(ValueError, match="'format' must be finite"):
        RewardCombiner({"format": float("nan")})


def test_mismatched_lengths_and_conflicting_references_are_errors():
    combiner = RewardCombiner({"mccs": 1.0}, labeler=KeywordLabeler())
    with pytest.raises(ValueError, match="one entry each"):
        combiner([wrap("a")], ["a", "b"], ["k", "k"])
    combiner([wrap("a")], ["Effusion."], ["k"])
    with pytest.raises(ValueError, match="study key 'k' was given two different reference texts"):
        combiner([wrap("a")], ["Cardiomegaly."], ["k"])


def test_bad_labeler_output_is_an_error():
    class WrongRows(KeywordLabeler):
        def label(self, texts):
            return super().label(list(texts) + ["extra"])

    with pytest.raises(ValueError, match="returned 2 rows for 1 texts"):
        RewardCombiner({"mccs": 1.0}, labeler=WrongRows())([wrap("a")], ["a"], ["k"])


def test_the_combiner_reports_format_compliance_even_without_a_format_term():
    combiner = RewardCombiner({"mccs": 1.0}, labeler=KeywordLabeler())
    completions = [wrap("No effusion."), "No effusion.", wrap("No effusion.", think=""), wrap("")]
    out = combiner(completions, ["No effusion."] * 4, ["s"] * 4)
    assert "format" not in out.terms
    assert out.format_ok.tolist() == [True, False, False, False]  # only full credit (1.0) counts
