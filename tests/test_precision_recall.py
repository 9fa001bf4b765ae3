"""Improved precision/recall: the suite's definitions, its float16 arithmetic, blocking."""

import pathlib

import numpy as np
import pytest

from pixnerd_jax.evaluation import precision_recall as pr

FIXTURE = (pathlib.Path(__file__).resolve().parents[2]
           / "shared/reference/fixtures/adm_metrics_tiny.npz")


def _brute_force(ref, samples, k=3):
  """The definitions in float64, no blocking: radii, precision, recall."""
  def sq_dist(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
  ref_radii = np.sort(sq_dist(ref, ref), axis=1)[:, k]
  sample_radii = np.sort(sq_dist(samples, samples), axis=1)[:, k]
  d = sq_dist(ref, samples)
  return ((d <= ref_radii[:, None]).any(0).mean(), (d <= sample_radii[None]).any(1).mean(),
          ref_radii, sample_radii)


def test_float32_fallback_matches_the_definition():
  # Norms near 1e5 overflow float16 (max 65504): every block falls back to float32.
  rng = np.random.default_rng(0)
  ref = rng.normal(10.0, 3.0, (40, 1000))
  samples = rng.normal(10.3, 3.0, (30, 1000))
  out = pr.precision_recall(ref, samples)
  precision, recall, ref_radii, sample_radii = _brute_force(ref, samples)
  np.testing.assert_allclose(out["ref_radii"], ref_radii, rtol=1e-4)
  np.testing.assert_allclose(out["sample_radii"], sample_radii, rtol=1e-4)
  assert (out["precision"], out["recall"]) == (precision, recall)
  assert 0 < out["precision"] < 1 and 0 < out["recall"] < 1


def test_float16_path_rounds_and_blocks_do_not_change_the_result(monkeypatch):
  rng = np.random.default_rng(1)
  ref = rng.random((37, 64)).astype(np.float32)
  samples = (rng.random((29, 64)) * 1.1).astype(np.float32)
  whole = pr.precision_recall(ref, samples)
  # float16: radii are float16 numbers, close to the exact ones (11 significant bits).
  assert (whole["ref_radii"].astype(np.float16) == whole["ref_radii"]).all()
  precision, recall, ref_radii, _ = _brute_force(ref, samples)
  np.testing.assert_allclose(whole["ref_radii"], ref_radii, rtol=3e-3)
  assert abs(whole["precision"] - precision) <= 2 / 29 and abs(whole["recall"] - recall) <= 2 / 37
  # Suite blocks of 10 rows/columns and row chunks of 4: the same numbers.
  monkeypatch.setattr(pr, "SUITE_BLOCK", 10)
  blocked = pr.precision_recall(ref, samples, row_chunk=4)
  np.testing.assert_array_equal(blocked["ref_radii"], whole["ref_radii"])
  np.testing.assert_array_equal(blocked["sample_radii"], whole["sample_radii"])
  assert (blocked["precision"], blocked["recall"]) == (whole["precision"], whole["recall"])


def test_identical_and_disjoint_sets():
  rng = np.random.default_rng(2)
  ref = rng.random((20, 16))
  same = pr.precision_recall(ref, ref[::-1])
  assert same["precision"] == same["recall"] == 1.0
  far = pr.precision_recall(ref, ref + 5.0)
  assert far["precision"] == far["recall"] == 0.0
  with pytest.raises(ValueError, match="more than k=3"):
    pr.precision_recall(ref[:3], ref)
  with pytest.raises(ValueError, match="same D"):
    pr.precision_recall(ref, ref[:, :8])


def test_radii_match_the_suite_fixture():
  if not FIXTURE.exists():
    pytest.skip(f"{FIXTURE} is absent (CI provides ../shared)")
  with np.load(FIXTURE) as data:
    ref, ref_radii = data["ref_pool"], data["ref_radii"]
  ours = pr.manifold_radii(ref)
  # The suite's float16 rounding: all but a handful (its matmul sums in another order)
  # agree to the bit, none by more than one rounding step of 2 u.v (0.5 for dot products
  # of 256-512 in float16).
  assert np.mean(ours == ref_radii) > 0.998
  assert np.abs(ours - ref_radii).max() <= 0.5
