"""A classifier trained on the real digits judges class-conditional samples.

Setup of our reference baseline: `SVC(gamma=0.001, C=10)` trained on the first
1,500 real 8x8 digits (pixel values 0..16, flattened to 64-d); the remaining
297 are held out. A generated sample (S x S RGB in [-1, 1]) is mapped back to
that space: [0, 1], mean over RGB, (S/8 x S/8) average pool -> 8x8, x16.
Real digits pushed through the pipeline's 8x8 -> S x S bicubic upsampling and
this round trip reach ~96% held-out accuracy, so a good generator should too.

The Fréchet distance is computed on the SVC's 10-d one-vs-rest decision
values, between the samples and all 1,797 real digits (same round trip).
"""

from typing import Optional

import numpy as np
from sklearn import svm

from pixnerd_jax.data import digits
from pixnerd_jax.data import preprocess
from pixnerd_jax.evaluation import frechet

NUM_TRAIN = 1500


def real_samples(resolution: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """All real digits as the pipeline serves them.

  Args:
    resolution: side S.

  Returns:
    float32 (1797, S, S, 3) in [-1, 1] and int32 labels (1797,); the first
    NUM_TRAIN are the judge's training digits, the rest are held out.
  """
  grey, labels = digits.load_upsampled(resolution)
  rgb = np.repeat(grey[..., None], 3, axis=-1)
  return preprocess.to_model_range(rgb), labels


class DigitsJudge:
  """Scores samples with an SVC trained on real 8x8 digits (fits in ~0.1 s)."""

  def __init__(self, resolution: int = 32):
    if resolution % digits.NATIVE_SIZE:
      raise ValueError(f'resolution={resolution} must be a multiple of '
                       f'{digits.NATIVE_SIZE} to pool back to 8x8.')
    self.resolution = resolution
    images, labels = digits.load_native()
    self._classifier = svm.SVC(gamma=0.001, C=10,
                               decision_function_shape='ovr')
    self._classifier.fit(images[:NUM_TRAIN].reshape(NUM_TRAIN, -1),
                         labels[:NUM_TRAIN])
    self._reference_stats = None

  def to_native(self, samples) -> np.ndarray:
    """Samples (N, S, S, 3) in [-1, 1] -> (N, 64) digits in 0..16."""
    samples = np.asarray(samples, np.float32)
    size = self.resolution
    if samples.ndim != 4 or samples.shape[1:] != (size, size, 3):
      raise ValueError(f'Expected samples of shape (N, {size}, {size}, 3), '
                       f'got {samples.shape}.')
    # Out-of-range values are clipped, as when the samples are saved.
    unit = (np.clip(samples, -1.0, 1.0) + 1.0) / 2.0
    grey = unit.mean(axis=-1)
    factor = size // digits.NATIVE_SIZE
    pooled = grey.reshape(len(grey), digits.NATIVE_SIZE, factor,
                          digits.NATIVE_SIZE, factor).mean(axis=(2, 4))
    return (pooled * digits.MAX_VALUE).reshape(len(grey), -1)

  def predict(self, samples) -> np.ndarray:
    """Predicted classes (N,) of samples (N, S, S, 3) in [-1, 1]."""
    return self._classifier.predict(self.to_native(samples))

  def accuracy(self, samples, labels) -> float:
    """Fraction of samples the judge assigns to their conditioning label."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(samples):
      raise ValueError(f'{len(samples)} samples but {len(labels)} labels.')
    return float(np.mean(self.predict(samples) == labels))

  def features(self, samples) -> np.ndarray:
    """(N, 10) one-vs-rest SVC decision values of samples in [-1, 1]."""
    return self._classifier.decision_function(self.to_native(samples))

  def _real_statistics(self):
    if self._reference_stats is None:
      real, _ = real_samples(self.resolution)
      self._reference_stats = frechet.feature_statistics(self.features(real))
    return self._reference_stats

  def frechet_distance(self, samples, reference=None) -> float:
    """Fréchet distance of judge features: samples vs real digits.

    Args:
      samples: (N, S, S, 3) in [-1, 1], N >= 2.
      reference: optional (M, S, S, 3) in [-1, 1] to compare against instead
        of all 1,797 real digits.

    Returns:
      The distance (0 for identical feature statistics).
    """
    mu, sigma = frechet.feature_statistics(self.features(samples))
    if reference is None:
      ref_mu, ref_sigma = self._real_statistics()
    else:
      ref_mu, ref_sigma = frechet.feature_statistics(self.features(reference))
    return frechet.frechet_distance(mu, sigma, ref_mu, ref_sigma)

  def metrics(self, samples, labels,
              reference: Optional[np.ndarray] = None) -> dict[str, float]:
    """{'accuracy': ..., 'frechet_distance': ...} of class-conditional samples."""
    return {'accuracy': self.accuracy(samples, labels),
            'frechet_distance': self.frechet_distance(samples, reference)}
