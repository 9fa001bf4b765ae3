"""Per-example and per-batch functions run inside the Grain pipeline.

Kept free of JAX so that they are cheap to unpickle in worker processes.
"""

import struct
from typing import Optional, Protocol, Union
import zlib

from absl import logging
import numpy as np
from PIL import Image

from pixnerd_jax.data import batching
from pixnerd_jax.data import preprocess


class Source(Protocol):
  """What the pipeline needs from a data source (digits, folder, tfds)."""

  def __len__(self) -> int:
    ...

  def load(self, index: int) -> tuple[np.ndarray, int]:
    """(S, S, 3) uint8 in 0..255 or float32 in [0, 1], and the label.

    Raises on a corrupt / unreadable example.
    """
    ...

  def describe(self, index: int) -> str:
    """A human-readable name of the example (path, record id) for logs."""
    ...


class CaptionSource(Protocol):
  """What the pipeline needs from a captioned source (text-to-image)."""

  def __len__(self) -> int:
    ...

  def load(self, index: int,
           rng: np.random.Generator) -> tuple[np.ndarray, str, Optional[int]]:
    """(S, S, 3) uint8 or float32 in [0, 1], the caption, and a label or None.

    `rng` is seeded by the stream position, for sources that choose among
    several captions. Raises on a corrupt / unreadable image or a missing or
    empty caption.
    """
    ...

  def describe(self, index: int) -> str:
    ...


# Stream of the per-position generator handed to `CaptionSource.load`, apart
# from the flip's, so that a source's draws never change the flips.
_CAPTION_STREAM = 1


def _flip(pixels: np.ndarray, seed: int, position: int) -> np.ndarray:
  rng = np.random.default_rng((seed, position))
  return pixels[:, ::-1] if rng.random() < 0.5 else pixels


# What unreadable or corrupt files raise: I/O errors, and the many types PIL
# raises for bad bytes (UnidentifiedImageError is an OSError; truncated or
# malformed data gives ValueError, SyntaxError, struct.error, EOFError; a
# decompression bomb gives DecompressionBombError). Anything else is a bug and
# propagates.
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, struct.error,
              zlib.error, Image.DecompressionBombError)


def _skip(source, index: int, error: Exception) -> batching.Skipped:
  reason = f'{source.describe(index)}: {type(error).__name__}: {error}'
  logging.warning('Skipping unreadable example %s', reason)
  return batching.Skipped(reason[:300])


class LoadExample:
  """Maps (stream position, source index) -> example dict, or Skipped on failure.

  Used with `MapDataset.map_with_index` on the repeated, shuffled index
  stream. The position in that stream (not the source index) seeds the flip,
  so each epoch flips an image independently, and the result does not depend
  on the number of hosts or workers.
  """

  def __init__(self, source: Source, *, random_flip: bool, seed: int):
    self._source = source
    self._random_flip = random_flip
    self._seed = seed

  def __call__(self, position: int,
               index: int) -> Union[dict[str, np.ndarray], batching.Skipped]:
    index = int(index)
    try:
      pixels, label = self._source.load(index)
    except UNREADABLE as e:
      return _skip(self._source, index, e)
    if self._random_flip:
      pixels = _flip(pixels, self._seed, position)
    return {'pixels': np.ascontiguousarray(pixels),
            'label': np.asarray(label, np.int32)}


class LoadCaptionedExample:
  """As `LoadExample` for a `CaptionSource`: (position, index) -> dict | Skipped.

  The dict holds `pixels`, `caption` (a 0-d str array, stacked into (B,) by
  the batcher) and, when the source has labels, `label`.
  """

  def __init__(self, source: CaptionSource, *, random_flip: bool, seed: int):
    self._source = source
    self._random_flip = random_flip
    self._seed = seed

  def __call__(self, position: int,
               index: int) -> Union[dict[str, np.ndarray], batching.Skipped]:
    index = int(index)
    rng = np.random.default_rng((self._seed, position, _CAPTION_STREAM))
    try:
      pixels, caption, label = self._source.load(index, rng)
    except UNREADABLE as e:
      return _skip(self._source, index, e)
    if self._random_flip:
      pixels = _flip(pixels, self._seed, position)
    example = {'pixels': np.ascontiguousarray(pixels),
               'caption': np.asarray(caption, np.str_)}
    if label is not None:
      example['label'] = np.asarray(label, np.int32)
    return example


def to_model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Batch of `pixels` -> `raw_image` in [0, 1] and `image` in [-1, 1].

  Args:
    batch: `pixels` (B, S, S, 3) uint8 or float32, `num_skipped` () and the
      other fields (`label` (B,), `caption` (B,) str), passed through.

  Returns:
    `image` float32 (B, S, S, 3) in [-1, 1], `raw_image` float32 (B, S, S, 3)
    in [0, 1], and the other fields copied.
  """
  raw = preprocess.to_unit_float(batch['pixels'])
  # Plain copies: arrays from worker processes are views of shared memory
  # that Grain frees when they are garbage collected.
  out = {key: np.array(value) for key, value in batch.items()
         if key != 'pixels'}
  out['image'] = preprocess.to_model_range(raw)
  out['raw_image'] = raw
  return out
