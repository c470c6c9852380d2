"""NLG metrics (corpus BLEU/ROUGE-L/CIDEr via pycocoevalcap) and the per-report NLG reward."""

import shutil
import sys

import pytest

from rewards.nlg import NLGReward, nlg_metrics, normalize_report

TRAIN = [
    "The heart is normal in size. No pleural effusion.",
    "The heart is normal in size. Mild left basilar atelectasis.",
    "The heart is normal in size. No pneumothorax.",
    "Cardiomegaly with small bilateral pleural effusions.",
]


def test_normalize_lowercases_splits_periods_and_keeps_decimals():
    assert normalize_report("No Effusion.Heart: 1.5 cm, XXXX!") == "no effusion . heart 1.5 cm xxxx"


def test_corpus_metrics_perfect_match_and_keys():
    refs = ["No pleural effusion or pneumothorax.", "Mild cardiomegaly. Lungs are clear."]
    metrics = nlg_metrics(refs, refs, meteor=False)
    assert set(metrics) == {"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L", "CIDEr"}
    for name in ("BLEU_1", "BLEU_4", "ROUGE_L"):
        assert metrics[name] == pytest.approx(1.0, abs=1e-6)
    assert metrics["CIDEr"] == pytest.approx(10.0, abs=1e-6)


def test_corpus_metrics_drop_for_a_worse_prediction():
    refs = ["No pleural effusion or pneumothorax.", "Mild cardiomegaly. Lungs are clear."]
    good = nlg_metrics(
        refs, ["No pleural effusion or pneumothorax.", "Mild cardiomegaly. Lungs clear."], False
    )
    bad = nlg_metrics(refs, ["Fracture of the rib.", "Large mass."], meteor=False)
    for name in ("BLEU_1", "BLEU_4", "ROUGE_L", "CIDEr"):
        assert good[name] > bad[name]


def test_corpus_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="2 references but 1 predictions"):
        nlg_metrics(["a", "b"], ["a"], meteor=False)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs java")
def test_meteor_is_added_when_requested_and_java_runs():
    refs = ["no pleural effusion .", "mild cardiomegaly ."]
    metrics = nlg_metrics(refs, ["no pleural effusion .", "large mass ."], meteor=True)
    assert 0.0 < metrics["METEOR"] < 1.0


def test_reward_is_sum_of_components_and_ranks_closer_reports_higher():
    reward = NLGReward(TRAIN)
    refs = ["The heart is normal in size. No pleural effusion."] * 3
    preds = [refs[0], "The heart is normal in size. Small pleural effusion.", "Rib fracture"]
    parts = reward.components(preds, refs)
    total = reward(preds, refs)
    assert total == pytest.approx(parts["BLEU_4"] + parts["ROUGE_L"] + parts["CIDEr_D"])
    assert total[0] > total[1] > total[2]
    assert parts["BLEU_4"][0] == pytest.approx(1.0, abs=1e-6)
    assert parts["ROUGE_L"][0] == pytest.approx(1.0)
    assert parts["ROUGE_L"][2] == 0.0


def test_cider_document_frequencies_come_from_training_references_only():
    reward = NLGReward(TRAIN)
    # "the heart is normal in size ." is in 3 of 4 training reports; "cardiomegaly" in 1.
    assert reward.document_frequency[("heart",)] == 3
    assert reward.document_frequency[("cardiomegaly",)] == 1
    before = dict(reward.document_frequency)
    reward(["Novel words never seen."], ["Other novel words."])
    assert dict(reward.document_frequency) == before, "scoring must not change or grow the frequencies"


def test_cider_does_not_depend_on_batch_companions():
    reward = NLGReward(TRAIN)
    pred, ref = "Small left pleural effusion.", "Small bilateral pleural effusions."
    alone = reward.components([pred], [ref])["CIDEr_D"][0]
    batch = reward.components([pred, "x", "y y"], [ref, "x", "z"])["CIDEr_D"][0]
    assert alone == pytest.approx(batch)
    assert alone > 0


def test_words_in_every_training_report_carry_no_cider_weight():
    reward = NLGReward(["a b c", "a b d", "a b e"])  # "a", "b", "a b" have idf log(3) - log(3) = 0
    assert reward.components(["a b"], ["a b"])["CIDEr_D"][0] == pytest.approx(0.0)
    assert reward.components(["a b c"], ["a b c"])["CIDEr_D"][0] > 0


def test_empty_texts_score_zero_without_error():
    reward = NLGReward(TRAIN)
    assert reward(["", "No effusion."], ["No effusion.", ""]) == pytest.approx([0.0, 0.0], abs=1e-9)
    assert reward([], []).shape == (0,)


def test_reward_needs_training_references():
    with pytest.raises(ValueError, match="non-empty"):
        NLGReward([])


def test_missing_pycocoevalcap_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m.startswith("pycocoevalcap")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)  # makes `import pycocoevalcap...` fail
    with pytest.raises(ImportError, match=r"pip install -e \.\[nlg\]"):
        nlg_metrics(["a"], ["a"], meteor=False)
    with pytest.raises(ImportError, match=r"pip install -e \.\[nlg\]"):
        NLGReward(["a"])
