"""The Fréchet distance between two Gaussians (the formula behind FID)."""

from absl import logging
import numpy as np
from scipy import linalg


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean (F,) and unbiased covariance (F, F) of features (N, F), float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(
        f'Need features of shape (N >= 2, F), got {features.shape}.')
  return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, eps: float = 1e-6) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)).

  Args:
    mu1, mu2: means (F,).
    sigma1, sigma2: covariances (F, F).
    eps: diagonal jitter added when S1 S2 is singular enough that its square
      root comes out non-finite (e.g. fewer samples than features).

  Returns:
    The distance, a Python float >= 0 (up to round-off).
  """
  mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(
      mu2).astype(np.float64)
  sigma1 = np.atleast_2d(sigma1).astype(np.float64)
  sigma2 = np.atleast_2d(sigma2).astype(np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f'Mismatched statistics: {mu1.shape} vs {mu2.shape}, '
                     f'{sigma1.shape} vs {sigma2.shape}.')
  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    logging.warning('sqrtm(S1 S2) is not finite; adding %g to the diagonals.',
                    eps)
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    # S1 S2 is similar to a PSD matrix, so its square root is real in exact
    # arithmetic; round-off leaves small imaginary parts, which are dropped.
    largest = np.max(np.abs(covmean.imag))
    if largest > 1e-3 * max(1.0, np.max(np.abs(covmean.real))):
      logging.warning('sqrtm(S1 S2) has a large imaginary part (%g); the '
                      'Fréchet distance may be inaccurate.', largest)
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * np.trace(covmean))
