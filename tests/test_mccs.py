"""MCCS, eq. (3)-(6): signed vectors, cosine, margin shaping, and the all-blank case."""

import math

import numpy as np
import pytest

from rewards.mccs import ccs, mccs, mccs_from_codes, signed_vectors
from rewards.vocabulary import BLANK, NEGATIVE, NO_FINDING, OBSERVATIONS, POSITIVE, UNCERTAIN


def codes_row(**by_name):
    """A (14,) code row from observation names written with underscores, e.g. Pleural_Effusion=POSITIVE."""
    row = np.zeros(len(OBSERVATIONS), dtype=np.int64)
    for name, code in by_name.items():
        row[OBSERVATIONS.index(name.replace("_", " "))] = code
    return row


def test_signed_vectors_map_codes_per_eq3_and_drop_no_finding():
    codes = np.array([[BLANK, POSITIVE, NEGATIVE, UNCERTAIN] + [BLANK] * 9 + [POSITIVE]])
    z = signed_vectors(codes)
    assert z.shape == (1, 13)
    assert z[0, :4].tolist() == [0.0, 1.0, -1.0, 1.0]
    assert not z[0, 4:].any(), "No Finding (positive here) must not enter the vector"


def test_signed_vectors_reject_bad_codes():
    with pytest.raises(ValueError, match="0..3"):
        signed_vectors(np.full((1, 14), 7))
    with pytest.raises(ValueError, match="shape"):
        signed_vectors(np.zeros((2, 13), dtype=int))


def test_ccs_hand_computed_case():
    # z = (1, -1, 1, 0...), z* = (1, 1, 0, 0...): <z, z*> = 0, so CCS = 0.
    # z = (1, -1, 1, 0...), z* = (1, -1, 0, 0...): <z, z*> = 2, |z| = sqrt 3, |z*| = sqrt 2 -> 2 / sqrt 6.
    z = np.zeros((2, 13))
    z[:, :3] = [1, -1, 1]
    z_ref = np.zeros((2, 13))
    z_ref[0, :2] = [1, 1]
    z_ref[1, :2] = [1, -1]
    assert ccs(z, z_ref) == pytest.approx([0.0, 2 / math.sqrt(6)], abs=1e-7)


def test_identical_vectors_score_one_and_polarity_reversal_scores_zero():
    pred = np.stack([codes_row(Cardiomegaly=POSITIVE, Edema=UNCERTAIN, Pneumothorax=NEGATIVE)] * 2)
    reversed_ref = np.stack([codes_row(Cardiomegaly=NEGATIVE, Edema=NEGATIVE, Pneumothorax=POSITIVE)] * 2)
    for margin in (-0.5, 0.0, 0.5):
        assert mccs_from_codes(pred, pred, margin=margin) == pytest.approx([1.0, 1.0], abs=1e-7)
        assert mccs_from_codes(pred, reversed_ref, margin=margin).tolist() == [0.0, 0.0]


def test_uncertain_counts_as_positive_per_eq3():
    pred = codes_row(Pleural_Effusion=UNCERTAIN)[None]
    ref = codes_row(Pleural_Effusion=POSITIVE)[None]
    assert mccs_from_codes(pred, ref) == pytest.approx([1.0], abs=1e-7)


def test_margin_rescales_and_filters():
    # CCS = 2 / sqrt 6 ~ 0.816 (see the hand-computed case)
    z = np.zeros(13)
    z[:3] = [1, -1, 1]
    z_ref = np.zeros(13)
    z_ref[:2] = [1, -1]
    similarity = 2 / math.sqrt(6)
    assert mccs(z, z_ref, margin=0.0) == pytest.approx([similarity], abs=1e-7)
    assert mccs(z, z_ref, margin=0.5) == pytest.approx([(similarity - 0.5) / 0.5], abs=1e-7)
    assert mccs(z, z_ref, margin=-0.5) == pytest.approx([(similarity + 0.5) / 1.5], abs=1e-7)
    assert mccs(z, z_ref, margin=0.9).tolist() == [0.0], "CCS at or below m earns nothing"


def test_under_eq2_the_margin_changes_a_group_only_through_its_clip():
    """Above m, eq. (6) is affine in CCS, which eq. (2)'s normalisation removes: a margin changes the
    advantages of a group only where it clips a CCS to 0."""
    import torch

    from grpo.advantages import group_advantages

    reference = np.array([1.0, -1.0, 1.0, 0.0, -1.0] + [0.0] * 8)
    z_ref = np.tile(reference, (8, 1))
    z = z_ref.copy()
    for i in range(8):  # eight reports near the reference
        z[i, i] = 0.0 if reference[i] else 1.0
        z[i, 12 - i : 13] = 1.0 if i % 2 else 0.0
    similarity = ccs(z, z_ref)
    low = float(similarity.min())
    assert low > 0.2

    def advantages(margin):
        return group_advantages(torch.tensor(mccs(z, z_ref, margin=margin)), group_size=8, eps=0.0)

    torch.testing.assert_close(advantages(0.9 * low), advantages(0.0))
    assert not torch.allclose(advantages(float(np.median(similarity))), advantages(0.0))


def test_margin_outside_open_interval_is_rejected():
    z = np.ones((1, 13))
    for bad in (1.0, -1.0, 1.5, -3):
        with pytest.raises(ValueError, match="margin"):
            mccs(z, z, margin=bad)


def test_all_blank_gives_zero_under_paper_formula_and_one_with_blank_match():
    blank = np.zeros((1, 14), dtype=np.int64)
    normal = blank.copy()
    normal[0, NO_FINDING] = POSITIVE  # a "normal" report: No Finding only, which eq. (4) drops
    some_finding = codes_row(Cardiomegaly=NEGATIVE)[None]
    assert ccs(signed_vectors(normal), signed_vectors(normal)).tolist() == [0.0]
    assert mccs_from_codes(normal, normal).tolist() == [0.0]
    assert mccs_from_codes(normal, blank, blank_match=True).tolist() == [1.0]
    # blank_match only applies when *both* are blank
    assert mccs_from_codes(normal, some_finding, blank_match=True).tolist() == [0.0]
    assert mccs_from_codes(some_finding, normal, blank_match=True).tolist() == [0.0]


def test_batch_is_row_by_row_and_bounded():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(64, 14))
    codes[:, NO_FINDING] = rng.integers(0, 2, size=64)
    ref = rng.permutation(codes)
    batch = mccs_from_codes(codes, ref, margin=0.2)
    one_by_one = [mccs_from_codes(codes[i : i + 1], ref[i : i + 1], margin=0.2)[0] for i in range(64)]
    assert batch.shape == (64,)
    assert batch == pytest.approx(one_by_one)
    assert ((batch >= 0) & (batch <= 1)).all()


def test_shape_mismatch_is_an_error_naming_shapes():
    with pytest.raises(ValueError, match="same shape"):
        ccs(np.ones((2, 13)), np.ones((3, 13)))
    with pytest.raises(ValueError, match="z_ref"):
        ccs(np.ones((2, 13)), np.ones((2, 14)))
