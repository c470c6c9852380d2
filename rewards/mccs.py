"""Margin CheXbert Cosine Similarity (MCCS), the paper's clinical reward, eq. (3)-(6).

Pipeline for one generated report ``y`` and its reference ``y*``:

1. ``signed_vectors``, eq. (3)-(4): 14 label codes -> 13 signed values (positive 1, negative -1,
   uncertain 1, blank 0); No Finding is dropped.
2. ``ccs``, eq. (5): ``<z, z*> / ((|z| + eps) (|z*| + eps))`` with ``eps = 1e-8``.
3. ``mccs``, eq. (6): ``max((CCS - m) / (1 - m), 0)`` with a margin ``m`` in (-1, 1).

All functions are vectorized over a batch: ``(N, 13)`` vectors in, ``(N,)`` scores out.

The all-blank case. When either vector is all zeros (a report that mentions none of the 13 findings,
e.g. "No acute cardiopulmonary process." labeled only No Finding), eq. (5) gives exactly 0, because the
numerator is 0 while the eps keeps the denominator positive. So under the paper's formula a perfect
"normal" prediction for a reference that is also all blank scores ``max(-m / (1 - m), 0)``: 0 for any
margin ``m >= 0``. ``blank_match=True`` (off by default, so the default is exactly the paper) instead
counts two all-blank vectors as a perfect match (CCS = 1, MCCS = 1). One all-blank vector against a
non-blank one still gives CCS = 0 either way.

The margin. The paper gives no value for ``m``. ``DEFAULT_MARGIN = 0.0`` is the neutral choice: eq. (6)
reduces to ``max(CCS, 0)``, so orthogonal and polarity-reversed label vectors earn nothing while every
positive agreement keeps a reward, which keeps the within-group spread GRPO needs. A positive margin
(e.g. 0.3) suppresses weak partial matches harder; it is a config value to tune. Under eq. (2) the margin
acts only through the clip: above ``m`` eq. (6) is an affine map of CCS, and the group's mean and standard
deviation cancel an affine map, so a group whose CCS all lie at or above ``m`` gets the advantages of
``m = 0`` (with other reward terms beside it, ``1 / (1 - m)`` also weighs MCCS more against them).
"""

from __future__ import annotations

import numpy as np

from rewards.vocabulary import NO_FINDING, NUM_OBSERVATIONS, validate_codes

DEFAULT_MARGIN = 0.0
CCS_EPS = 1e-8
NUM_FINDINGS = NUM_OBSERVATIONS - 1  # the 13 dimensions of eq. (4)

# eq. (3): f(blank) = 0, f(pos) = 1, f(neg) = -1, f(uncertain) = 1, indexed by the CheXbert code.
_SIGNED_VALUE_BY_CODE = np.array([0.0, 1.0, -1.0, 1.0])


def signed_vectors(codes: np.ndarray) -> np.ndarray:
    """``(N, 14)`` label codes -> ``(N, 13)`` float64 signed vectors, eq. (3)-(4) (No Finding dropped)."""
    codes = validate_codes(codes)
    signed = _SIGNED_VALUE_BY_CODE[codes]
    return np.delete(signed, NO_FINDING, axis=1)


def _as_batch(z: np.ndarray, name: str) -> np.ndarray:
    """Accept ``(13,)`` or ``(N, 13)``; return a float64 ``(N, 13)`` view."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 1:
        z = z[None, :]
    if z.ndim != 2 or z.shape[1] != NUM_FINDINGS:
        raise ValueError(f"{name} must have shape (N, {NUM_FINDINGS}) or ({NUM_FINDINGS},), got {z.shape}")
    return z


def ccs(z: np.ndarray, z_ref: np.ndarray, eps: float = CCS_EPS) -> np.ndarray:
    """CheXbert cosine similarity, eq. (5), row by row: ``(N, 13), (N, 13) -> (N,)``.

    Returns 0 where either vector is all zeros (the eps keeps the denominator positive).
    """
    z, z_ref = _as_batch(z, "z"), _as_batch(z_ref, "z_ref")
    if z.shape != z_ref.shape:
        raise ValueError(f"z and z_ref must have the same shape, got {z.shape} and {z_ref.shape}")
    dot = np.einsum("ij,ij->i", z, z_ref)
    return dot / ((np.linalg.norm(z, axis=1) + eps) * (np.linalg.norm(z_ref, axis=1) + eps))


def check_margin(margin: float) -> float:
    """Eq. (6) needs ``m`` strictly inside (-1, 1); raise ValueError naming the value otherwise."""
    margin = float(margin)
    if not -1.0 < margin < 1.0:
        raise ValueError(f"MCCS margin m must lie in (-1, 1), got {margin}")
    return margin


def mccs(
    z: np.ndarray,
    z_ref: np.ndarray,
    margin: float = DEFAULT_MARGIN,
    blank_match: bool = False,
    eps: float = CCS_EPS,
) -> np.ndarray:
    """Margin-shaped cosine reward, eq. (6): ``max((CCS - m) / (1 - m), 0)``, ``(N, 13) x2 -> (N,)``.

    ``blank_match=True`` scores 1 where both vectors are all blank (the paper's formula gives
    ``max(-m / (1 - m), 0)`` there; see the module docstring).
    """
    margin = check_margin(margin)
    z, z_ref = _as_batch(z, "z"), _as_batch(z_ref, "z_ref")
    similarity = ccs(z, z_ref, eps=eps)
    if blank_match:
        both_blank = ~z.any(axis=1) & ~z_ref.any(axis=1)
        similarity = np.where(both_blank, 1.0, similarity)
    # Clip the top at 1: with eps the cosine of identical vectors is 1 - O(eps), never above 1.
    return np.clip((similarity - margin) / (1.0 - margin), 0.0, 1.0)


def mccs_from_codes(
    codes: np.ndarray, ref_codes: np.ndarray, margin: float = DEFAULT_MARGIN, blank_match: bool = False
) -> np.ndarray:
    """Convenience: MCCS straight from two ``(N, 14)`` code arrays."""
    return mccs(signed_vectors(codes), signed_vectors(ref_codes), margin=margin, blank_match=blank_match)
