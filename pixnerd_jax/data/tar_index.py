"""Member index of a webdataset-style `.tar` shard, built once and cached.

A shard holds examples as members sharing a key: `dir/0001.jpg` + `dir/0001.txt`
(or `.json`). The key is the member path up to the first dot of its file name,
the extension the rest, lower-cased (webdataset's rule, so `a.seg.png` has key
`a` and extension `seg.png`). The index records, per key with an image member,
the byte offset and size of the image and of its caption, so examples are read
with two `pread`s, in any order, without scanning the archive.

The index is JSON, written next to the shard as `<shard>.idx.json`, or, when
that directory is not writable, under a cache directory. It stores the shard's
size and mtime and is rebuilt when either changes.
"""

import collections
import hashlib
import json
import os
import tarfile
import tempfile
from typing import Any, Optional

from absl import logging

INDEX_SUFFIX = '.idx.json'
INDEX_FORMAT = 'pixnerd-tar-index'
INDEX_VERSION = 1
IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp')
CAPTION_EXTENSIONS = ('txt', 'json')  # Preference order when both exist.
# Leading bytes of compressed files, which have no random access.
_COMPRESSED_MAGIC = {b'\x1f\x8b': 'gzip', b'BZh': 'bzip2',
                     b'\xfd7zXZ\x00': 'xz', b'\x28\xb5\x2f\xfd': 'zstd'}


class NotATarError(ValueError):
  """The shard is not an uncompressed tar archive."""


def split_member_name(name: str) -> Optional[tuple[str, str]]:
  """`dir/key.ext.more` -> (`dir/key`, `ext.more`); None for names to ignore.

  Ignored: no extension, and hidden files (`._x.jpg`, macOS metadata).
  """
  directory, base = os.path.split(name)
  if not base or base.startswith('.'):
    return None
  stem, dot, extension = base.partition('.')
  if not dot or not stem or not extension:
    return None
  return os.path.join(directory, stem), extension.lower()


def _check_is_tar(shard: str) -> None:
  with open(shard, 'rb') as f:
    head = f.read(tarfile.BLOCKSIZE)
  for magic, kind in _COMPRESSED_MAGIC.items():
    if head.startswith(magic):
      raise NotATarError(
          f'{shard} is {kind}-compressed; random access needs plain .tar '
          'shards (decompress them once, e.g. with gunzip).')
  if len(head) < tarfile.BLOCKSIZE:
    raise NotATarError(f'{shard} is too short to be a tar archive '
                       f'({len(head)} bytes).')
  if head.count(0) == tarfile.BLOCKSIZE:
    return  # An empty archive: end-of-archive blocks only.
  try:
    tarfile.TarInfo.frombuf(head, tarfile.ENCODING, 'surrogateescape')
  except tarfile.HeaderError as e:
    raise NotATarError(f'{shard} does not start with a tar header ({e}).') \
        from None


def build_index(shard: str) -> dict[str, Any]:
  """Scans the tar headers of `shard` (not the data) into an index dict.

  Damage is tolerated: a corrupt header is skipped (the scan resynchronises
  on the next valid header) and a shard cut short keeps the members before
  the cut; a member whose data runs past the end is kept, and reading it then
  fails, so the pipeline counts it as skipped.

  Returns:
    {'format', 'version', 'shard_size', 'shard_mtime_ns',
     'examples': [[key, image_offset, image_size, caption_ext,
                   caption_offset, caption_size], ...] in archive order
                  (caption_ext '' and sizes -1 when the key has no caption),
     'ignored': {reason: count}, 'error': str or None}.

  Raises:
    NotATarError: compressed or not a tar at all.
    OSError: the shard cannot be read.
  """
  stat = os.stat(shard)
  _check_is_tar(shard)
  images = {}    # key -> (offset, size)
  captions = {}  # key -> {ext: (offset, size)}
  order = {}     # key -> None, in archive order of first appearance
  ignored = collections.Counter()
  error = None
  # ignore_zeros: on an invalid header, skip one block and keep looking for
  # the next valid one instead of silently ending the scan there.
  with tarfile.open(shard, mode='r:', ignore_zeros=True) as tar:
    try:
      for info in tar:
        if not info.isfile():
          continue
        split = split_member_name(info.name)
        if split is None:
          ignored['unnamed'] += 1
          continue
        key, extension = split
        order.setdefault(key)
        if extension in IMAGE_EXTENSIONS:
          if key in images:
            ignored['duplicate_image'] += 1
            continue
          images[key] = (info.offset_data, info.size)
        elif extension in CAPTION_EXTENSIONS:
          captions.setdefault(key, {}).setdefault(
              extension, (info.offset_data, info.size))
        else:
          ignored['other_extension'] += 1
    except tarfile.TarError as e:
      # E.g. "unexpected end of data": the shard was cut short.
      error = f'{type(e).__name__}: {e}'
  examples = []
  for key in order:
    if key not in images:
      if key in captions:
        ignored['caption_without_image'] += 1
      continue
    offset, size = images[key]
    found = captions.get(key, {})
    extension = next((e for e in CAPTION_EXTENSIONS if e in found), '')
    caption_offset, caption_size = found.get(extension, (-1, -1))
    examples.append([key, offset, size, extension, caption_offset,
                     caption_size])
  return {'format': INDEX_FORMAT, 'version': INDEX_VERSION,
          'shard_size': stat.st_size, 'shard_mtime_ns': stat.st_mtime_ns,
          'examples': examples, 'ignored': dict(ignored), 'error': error}


def default_cache_dir() -> str:
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join('~', '.cache')
  return os.path.join(os.path.expanduser(base), 'pixnerd_jax', 'tar_index')


def index_paths(shard: str, cache_dir: Optional[str] = None) -> list[str]:
  """Where the index of `shard` may live: beside it, then in the cache dir."""
  absolute = os.path.abspath(shard)
  digest = hashlib.sha256(os.fsencode(absolute)).hexdigest()[:16]  # any file name
  cached = os.path.join(cache_dir or default_cache_dir(),
                        f'{digest}-{os.path.basename(shard)}{INDEX_SUFFIX}')
  return [absolute + INDEX_SUFFIX, cached]


def _read_valid(path: str, stat: os.stat_result) -> Optional[dict[str, Any]]:
  """The index at `path` if it exists and describes the shard as it is now."""
  try:
    with open(path, encoding='utf-8') as f:
      index = json.load(f)
  except (OSError, ValueError):
    return None
  if (not isinstance(index, dict) or index.get('format') != INDEX_FORMAT or
      index.get('version') != INDEX_VERSION or
      index.get('shard_size') != stat.st_size or
      index.get('shard_mtime_ns') != stat.st_mtime_ns or
      not isinstance(index.get('examples'), list)):
    return None
  return index


def _write_atomic(path: str, index: dict[str, Any]) -> None:
  """Writes JSON via a temporary file + rename, so that concurrent builders
  (several hosts on a shared file system) never leave a half-written index."""
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-',
                             suffix=INDEX_SUFFIX)
  try:
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      json.dump(index, f, separators=(',', ':'))
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def load_or_build(shard: str, cache_dir: Optional[str] = None
                  ) -> dict[str, Any]:
  """The index of `shard`: a valid cached one, else built and cached.

  A shard that is not a tar archive gets an index without examples whose
  `error` says why (cached too: it is a property of the file).

  Raises:
    OSError: the shard cannot be read (nothing is cached then).
  """
  stat = os.stat(shard)
  paths = index_paths(shard, cache_dir)
  for path in paths:
    index = _read_valid(path, stat)
    if index is not None:
      return index
  try:
    index = build_index(shard)
  except NotATarError as e:
    index = {'format': INDEX_FORMAT, 'version': INDEX_VERSION,
             'shard_size': stat.st_size, 'shard_mtime_ns': stat.st_mtime_ns,
             'examples': [], 'ignored': {}, 'error': str(e)}
  for path in paths:
    try:
      _write_atomic(path, index)
      break
    except OSError as e:
      logging.info('Cannot write the tar index %s (%s).', path, e)
  else:
    logging.warning('Could not cache the index of %s in %s; it will be '
                    'rebuilt next time.', shard, ' or '.join(paths))
  return index
