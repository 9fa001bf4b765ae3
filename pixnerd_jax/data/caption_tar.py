"""Captioned webdataset `.tar` shards, read with random access through indices.

    config.data.name = 'caption_tar'
    config.data.tar_shards = '/data/blip3o/*.tar'   # glob(s), comma-separated

Each shard holds `key.jpg|jpeg|png|webp` + `key.txt` or `key.json` (the caption
in the field config.data.caption_field, else "caption", "text" or "prompt").
Shards are indexed once (`tar_index`), so Grain's global shuffle and per-host
blocks work exactly as for the other sources. Images get the caption data's
preprocessing (torchvision Resize + CenterCrop, `preprocess.decode_resize_crop`).
"""

from concurrent import futures
import glob
import os
import tarfile
from typing import Optional

from absl import logging
import numpy as np

from pixnerd_jax.data import captions
from pixnerd_jax.data import preprocess
from pixnerd_jax.data import tar_index

# Threads indexing shards the first time: the scan is mostly waiting on reads.
_INDEX_THREADS = 16


def list_shards(pattern: str) -> list[str]:
  """Sorted shard files matching a glob, or several separated by commas.

  Raises:
    ValueError: empty pattern. FileNotFoundError: a glob matches no shard.
  """
  globs = [p.strip() for p in pattern.split(',') if p.strip()]
  if not globs:
    raise ValueError(
        "config.data.name='caption_tar' needs config.data.tar_shards, a glob "
        "of webdataset .tar shards, e.g. '/data/laion/part-*.tar'.")
  shards = set()
  for pattern_ in globs:
    matches = [path for path in glob.glob(os.path.expanduser(pattern_))
               if os.path.isfile(path) and
               not os.path.basename(path).startswith('.') and
               not path.endswith(tar_index.INDEX_SUFFIX)]
    if not matches:
      raise FileNotFoundError(
          f'config.data.tar_shards: {pattern_!r} matches no files. Set it to '
          "a glob of existing .tar shards, e.g. '/data/laion/part-*.tar'.")
    shards.update(matches)
  return sorted(shards)


class CaptionTarSource:
  """Random-access source over the indexed examples of all shards.

  Per example it keeps only numbers (shard id, offsets and sizes, ~30 bytes),
  since the source is pickled into every worker process.
  """

  def __init__(self, pattern: str, resolution: int, *,
               caption_field: str = 'caption',
               cache_dir: Optional[str] = None):
    self._resolution = resolution
    self._caption_field = caption_field
    self._shards = list_shards(pattern)
    with futures.ThreadPoolExecutor(
        min(_INDEX_THREADS, len(self._shards))) as pool:
      indices = list(pool.map(
          lambda shard: _index_or_none(shard, cache_dir), self._shards))
    columns = [[] for _ in range(6)]
    errors = []
    for shard_id, (shard, index) in enumerate(zip(self._shards, indices)):
      if index is None:
        errors.append(f'{shard}: unreadable')
        continue
      if index['error']:
        logging.warning('Tar shard %s: %s (indexed %d examples).', shard,
                        index['error'], len(index['examples']))
        errors.append(f'{shard}: {index["error"]}')
      if index['ignored']:
        logging.info('Tar shard %s: ignored members %s.', shard,
                     index['ignored'])
      for _, offset, size, extension, cap_offset, cap_size in index[
          'examples']:
        for column, value in zip(columns, (shard_id, offset, size,
                                           extension == 'json', cap_offset,
                                           cap_size)):
          column.append(value)
    if not columns[0]:
      raise ValueError(
          f'The {len(self._shards)} tar shards of config.data.tar_shards='
          f'{pattern!r} hold no image members (.jpg/.jpeg/.png/.webp); '
          f'first problem: {errors[0] if errors else "none reported"}.')
    if all(size < 0 for size in columns[5]):
      raise ValueError(
          f'None of the {len(columns[0])} images in the shards of '
          f'config.data.tar_shards={pattern!r} has a caption member: '
          'caption_tar expects key.txt or key.json beside each key.jpg.')
    self._shard_ids = np.asarray(columns[0], np.int32)
    self._image_offsets = np.asarray(columns[1], np.int64)
    self._image_sizes = np.asarray(columns[2], np.int64)
    self._caption_is_json = np.asarray(columns[3], bool)
    self._caption_offsets = np.asarray(columns[4], np.int64)
    self._caption_sizes = np.asarray(columns[5], np.int64)
    logging.info('caption_tar: %d examples in %d shards.', len(self),
                 len(self._shards))

  def __len__(self) -> int:
    return len(self._shard_ids)

  @property
  def shards(self) -> list[str]:
    return list(self._shards)

  def load(self, index: int,
           rng: np.random.Generator) -> tuple[np.ndarray, str, None]:
    """Returns uint8 (S, S, 3), the caption and no label.

    Raises:
      ValueError: no caption member, an empty caption, bad JSON.
      EOFError: a member cut short. Decoding errors for bad image bytes.
    """
    del rng  # One caption per image.
    if self._caption_sizes[index] < 0:
      raise ValueError('no caption member (.txt or .json) with the same key')
    shard = self._shards[self._shard_ids[index]]
    # A descriptor per read rather than one cached per shard: a shuffled
    # stream touches every shard, and thousands of open files would exceed
    # the process limit. Opening costs microseconds next to a decode.
    with open(shard, 'rb') as f:
      text = _pread(f, self._caption_offsets[index],
                    self._caption_sizes[index])
      encoded = _pread(f, self._image_offsets[index],
                       self._image_sizes[index])
    if self._caption_is_json[index]:
      caption = captions.caption_from_json(text, self._caption_field)
    else:
      caption = captions.decode_text(text)
    pixels = preprocess.decode_resize_crop(encoded, self._resolution)
    return pixels, caption, None

  def describe(self, index: int) -> str:
    shard = self._shards[self._shard_ids[index]]
    offset = int(self._image_offsets[index])
    return f'{shard}[{_member_name(shard, offset) or f"byte {offset}"}]'


def _index_or_none(shard: str, cache_dir: Optional[str]):
  try:
    return tar_index.load_or_build(shard, cache_dir)
  except OSError as e:
    logging.warning('Skipping unreadable tar shard %s: %s', shard, e)
    return None


def _pread(f, offset: int, size: int) -> bytes:
  data = os.pread(f.fileno(), int(size), int(offset))
  if len(data) != size:
    raise EOFError(f'member cut short: {len(data)} of {size} bytes at byte '
                   f'{offset}')
  return data


def _member_name(shard: str, data_offset: int) -> Optional[str]:
  """The member name from the header block before its data (for logs)."""
  try:
    with open(shard, 'rb') as f:
      header = os.pread(f.fileno(), tarfile.BLOCKSIZE,
                        data_offset - tarfile.BLOCKSIZE)
    return tarfile.TarInfo.frombuf(header, tarfile.ENCODING,
                                   'surrogateescape').name
  except Exception:  # pylint: disable=broad-exception-caught
    return None
