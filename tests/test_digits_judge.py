"""Tests of the digits judge and the Fréchet distance."""

import numpy as np
import pytest

from pixnerd_jax.embedded import digits_judge
from pixnerd_jax.evaluation import frechet


@pytest.fixture(scope='module')
def judge():
  return digits_judge.DigitsJudge(resolution=32)


@pytest.fixture(scope='module')
def real():
  return digits_judge.real_samples(32)


def test_held_out_real_digits_after_the_round_trip_are_recognised(judge,
                                                                   real):
  samples, labels = real
  held_out = slice(digits_judge.NUM_TRAIN, None)
  assert len(labels[held_out]) == 297
  assert judge.accuracy(samples[held_out], labels[held_out]) >= 0.93
  # Wrong labels are not rewarded.
  assert judge.accuracy(samples[held_out], (labels[held_out] + 1) % 10) < 0.1


def test_round_trip_recovers_the_native_digits(judge, real):
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  native = judge.to_native(real[0][:50])
  original = sk_datasets.load_digits().images[:50].reshape(50, -1)
  # Bicubic up then box down is close to, not exactly, the identity.
  assert np.abs(native - original).mean() < 1.5
  assert np.corrcoef(native.ravel(), original.ravel())[0, 1] > 0.97


def test_noise_scores_low_accuracy_and_a_large_frechet_distance(judge, real):
  samples, labels = real
  held_out = slice(digits_judge.NUM_TRAIN, None)
  rng = np.random.default_rng(0)
  noise = rng.uniform(-1, 1, samples[held_out].shape).astype(np.float32)
  assert judge.accuracy(noise, labels[held_out]) < 0.3
  real_fd = judge.frechet_distance(samples[held_out])
  noise_fd = judge.frechet_distance(noise)
  # ~2 for held-out real digits (the SVC fits its training digits more
  # tightly), ~100 for noise.
  assert real_fd < 5.0
  assert noise_fd > 10 * real_fd
  metrics = judge.metrics(noise, labels[held_out])
  assert metrics == {'accuracy': judge.accuracy(noise, labels[held_out]),
                     'frechet_distance': noise_fd}


def test_features_are_ten_dimensional_decision_values(judge, real):
  features = judge.features(real[0][:20])
  assert features.shape == (20, 10)
  # One-vs-rest decision values: the argmax is the predicted class.
  np.testing.assert_array_equal(features.argmax(axis=1),
                                judge.predict(real[0][:20]))


def test_frechet_distance_against_an_explicit_reference(judge, real):
  samples = real[0]
  assert judge.frechet_distance(samples[:300], reference=samples[:300]) == (
      pytest.approx(0.0, abs=1e-6))


def _eig_frechet(mu1, s1, mu2, s2):
  """Independent: Tr sqrtm(S1 S2) = sum sqrt(eig(A S2 A)), A = sqrt(S1)."""
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  middle = np.linalg.eigvalsh(root1 @ s2 @ root1)
  trace_sqrt = np.sqrt(np.clip(middle, 0, None)).sum()
  return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
               - 2 * trace_sqrt)


def test_frechet_matches_an_eigendecomposition_computation():
  rng = np.random.default_rng(0)
  for dim in (1, 4, 10):
    a = rng.normal(size=(500, dim)) @ rng.normal(size=(dim, dim))
    b = rng.normal(size=(300, dim)) * 2 + 0.5
    mu1, s1 = frechet.feature_statistics(a)
    mu2, s2 = frechet.feature_statistics(b)
    assert frechet.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        _eig_frechet(mu1, s1, mu2, s2), rel=1e-6, abs=1e-8)


def test_frechet_is_zero_for_identical_statistics_and_grows_with_shift():
  rng = np.random.default_rng(1)
  mu, sigma = frechet.feature_statistics(rng.normal(size=(200, 6)))
  assert frechet.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(
      0.0, abs=1e-8)
  shifted = frechet.frechet_distance(mu, sigma, mu + 3.0, sigma)
  assert shifted == pytest.approx(6 * 9.0, rel=1e-8)


def test_frechet_handles_singular_covariances():
  # Fewer samples than dimensions: rank-deficient covariances.
  rng = np.random.default_rng(2)
  mu1, s1 = frechet.feature_statistics(rng.normal(size=(3, 8)))
  mu2, s2 = frechet.feature_statistics(rng.normal(size=(3, 8)))
  value = frechet.frechet_distance(mu1, s1, mu2, s2)
  assert np.isfinite(value) and value > 0
