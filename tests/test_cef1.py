"""Report-level CE-F1 reward: hand-computed F1, the uncertain policy and the both-empty rule."""

import numpy as np
import pytest

from rewards.cef1 import ce_f1_reward
from rewards.vocabulary import BLANK, NEGATIVE, NO_FINDING, OBSERVATIONS, POSITIVE, UNCERTAIN


def row(**by_name):
    codes = np.zeros(len(OBSERVATIONS), dtype=np.int64)
    for name, code in by_name.items():
        codes[OBSERVATIONS.index(name.replace("_", " "))] = code
    return codes


def test_hand_computed_f1():
    # pred present: Cardiomegaly, Edema, Atelectasis; ref present: Cardiomegaly, Edema, Pleural Effusion, Fracture
    # TP 2, FP 1, FN 2 -> F1 = 4 / (4 + 1 + 2) = 4/7
    pred = row(Cardiomegaly=POSITIVE, Edema=POSITIVE, Atelectasis=POSITIVE, Pneumothorax=NEGATIVE)
    ref = row(Cardiomegaly=POSITIVE, Edema=POSITIVE, Pleural_Effusion=POSITIVE, Fracture=POSITIVE)
    assert ce_f1_reward(pred[None], ref[None]) == pytest.approx([4 / 7])


def test_identical_and_disjoint():
    a = row(Cardiomegaly=POSITIVE, Edema=POSITIVE)
    b = row(Pneumothorax=POSITIVE)
    assert ce_f1_reward(np.stack([a, a]), np.stack([a, b])).tolist() == [1.0, 0.0]


def test_negative_and_blank_both_count_as_absent():
    pred = row(Edema=NEGATIVE, Cardiomegaly=POSITIVE)
    ref = row(Edema=BLANK, Cardiomegaly=POSITIVE)
    assert ce_f1_reward(pred[None], ref[None]).tolist() == [1.0]


def test_uncertain_policy():
    pred = row(Pneumonia=UNCERTAIN)
    ref = row(Pneumonia=POSITIVE)
    assert ce_f1_reward(pred[None], ref[None], uncertain_as="positive").tolist() == [1.0]
    assert ce_f1_reward(pred[None], ref[None], uncertain_as="negative").tolist() == [0.0]
    with pytest.raises(ValueError, match="uncertain_as"):
        ce_f1_reward(pred[None], ref[None], uncertain_as="maybe")


def test_no_finding_is_one_of_the_14_labels():
    normal = row()
    normal[NO_FINDING] = POSITIVE
    assert ce_f1_reward(normal[None], normal[None]).tolist() == [1.0]
    assert ce_f1_reward(normal[None], row(Edema=POSITIVE)[None]).tolist() == [0.0]


def test_both_empty_scores_both_empty_value():
    empty = row(Edema=NEGATIVE)[None]  # nothing present on either side
    assert ce_f1_reward(empty, empty).tolist() == [1.0]
    assert ce_f1_reward(empty, empty, both_empty=0.0).tolist() == [0.0]
    assert ce_f1_reward(empty, row(Edema=POSITIVE)[None]).tolist() == [0.0], "one side empty is a miss"


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        ce_f1_reward(np.zeros((2, 14), dtype=int), np.zeros((3, 14), dtype=int))
