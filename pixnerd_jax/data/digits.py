"""The embedded digits dataset: scikit-learn's 1,797 real 8x8 handwritten digits.

It ships inside scikit-learn (no download), so it is the default smoke-test
dataset: class-conditional generation with 10 classes at a small resolution.
"""

import functools

import numpy as np
from PIL import Image
from sklearn import datasets as sk_datasets

NUM_CLASSES = 10
NATIVE_SIZE = 8
# The sklearn digits store ink as integers 0..16.
MAX_VALUE = 16.0


@functools.lru_cache(maxsize=1)
def load_native() -> tuple[np.ndarray, np.ndarray]:
  """Returns the raw digits: float32 (1797, 8, 8) in 0..16 and int32 (1797,)."""
  digits = sk_datasets.load_digits()
  return (digits.images.astype(np.float32), digits.target.astype(np.int32))


def upsample(images: np.ndarray, resolution: int) -> np.ndarray:
  """Resizes 8x8 digits in 0..16 to greyscale S x S in [0, 1].

  Bicubic on float ('F' mode) images, so no 8-bit quantisation; bicubic
  overshoots, hence the clip.

  Args:
    images: float (N, 8, 8) in 0..16.
    resolution: output side S.

  Returns:
    float32 (N, S, S) in [0, 1].
  """
  out = np.empty((len(images), resolution, resolution), np.float32)
  for i, image in enumerate(images):
    grey = Image.fromarray((image / MAX_VALUE).astype(np.float32), mode='F')
    grey = grey.resize((resolution, resolution), resample=Image.BICUBIC)
    out[i] = np.asarray(grey)
  return np.clip(out, 0.0, 1.0)


@functools.lru_cache(maxsize=4)
def load_upsampled(resolution: int) -> tuple[np.ndarray, np.ndarray]:
  """All digits resized once: float32 (1797, S, S) in [0, 1], int32 labels."""
  images, labels = load_native()
  upsampled = upsample(images, resolution)
  upsampled.setflags(write=False)
  return upsampled, labels


class DigitsSource:
  """Random-access source over the pre-resized digits (greyscale -> RGB)."""

  def __init__(self, resolution: int):
    # Stored as (N, S, S) greyscale: 3x less to pickle into worker processes.
    self._images, self._labels = load_upsampled(resolution)

  def __len__(self) -> int:
    return len(self._labels)

  def load(self, index: int) -> tuple[np.ndarray, int]:
    """Returns float32 (S, S, 3) in [0, 1] and the label of example `index`."""
    grey = self._images[index]
    return np.repeat(grey[:, :, None], 3, axis=2), int(self._labels[index])

  def describe(self, index: int) -> str:
    return f'digits[{index}]'
