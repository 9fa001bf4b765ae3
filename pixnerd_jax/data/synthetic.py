"""Synthetic batches made on the accelerators, for timing the train step without input.

`config.data.name = "synthetic"`: random images in [-1, 1] at config.data.resolution,
with random class labels (class models) or one fixed caption's tokens (text models, when
a tokenizer is given). Batch n is a function of (seed, n) only, drawn by a jitted program
straight into the batch's sharding, so no host work or host-to-device copy is timed. The
iterator's state is the next batch index: it checkpoints and resumes like the Grain
pipelines (get_state / set_state, saved by grain's checkpoint handler).
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from pixnerd_jax.data import batching

# The caption of every synthetic example (its words are the stand-in encoder's
# vocabulary, so a text model can train on synthetic data offline).
CAPTION = 'a synthetic image of random pixels'


def caption_vocabulary() -> tuple[str, ...]:
  return tuple(sorted(set(CAPTION.split())))


def _default_sharding() -> jax.sharding.NamedSharding:
  """Batch axis over every device, in jax.devices() order (the trainer passes its own)."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('batch',))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('batch'))


@functools.lru_cache(maxsize=None)
def _drawer(shape: tuple[int, ...], num_classes: int, captioned: bool, sharding):
  """The jitted (seed, index, caption tokens) -> batch; one compile per setting."""
  batch_size = shape[0]

  @functools.partial(jax.jit, out_shardings=sharding)
  def draw(seed, index, tokens):
    key = jax.random.fold_in(jax.random.key(seed), index)
    image = jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)
    batch = {'image': image, 'raw_image': (image + 1.0) / 2.0}
    if captioned:
      for name, row in tokens.items():
        batch[name] = jnp.broadcast_to(row, (batch_size, row.shape[1]))
    else:
      batch['label'] = jax.random.randint(jax.random.fold_in(key, 1), (batch_size,), 0,
                                          num_classes, jnp.int32)
    return batch
  return draw


class SyntheticIterator:
  """Yields global batches as sharded jax.Arrays (make_global_batch passes them on).

  Batches: 'image' (B, S, S, 3) float32 in [-1, 1], 'raw_image' the same in [0, 1],
  'label' (B,) int32 in [0, num_classes) or 'input_ids', 'attention_mask' (B, L) int32;
  'num_skipped' 0. B is the global batch size: each process holds its devices' rows.
  """

  def __init__(self, *, global_batch_size: int, resolution: int, seed: int,
               num_classes: int, tokenizer=None, sharding=None):
    if num_classes <= 0:
      raise ValueError(f'config.data.synthetic_num_classes must be positive, got '
                       f'{num_classes}.')
    self._sharding = sharding or _default_sharding()
    self._seed = np.uint32(seed)
    self._index = 0
    self._tokens = {}
    if tokenizer is not None:
      encoded = tokenizer.tokenize([CAPTION])
      self._tokens = {k: np.asarray(encoded[k], np.int32)
                      for k in ('input_ids', 'attention_mask')}
    self._draw = _drawer((global_batch_size, resolution, resolution, 3), num_classes,
                         tokenizer is not None, self._sharding)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = dict(self._draw(self._seed, np.int32(self._index), self._tokens))
    self._index += 1
    batch[batching.NUM_SKIPPED_KEY] = np.int32(0)
    return batch

  # grain's checkpoint handler saves iterators that are not its own as bytes.
  def get_state(self) -> bytes:
    return json.dumps({'next_index': self._index}).encode()

  def set_state(self, state: bytes) -> None:
    self._index = int(json.loads(state)['next_index'])

  def start_prefetch(self) -> None:
    """Called by grain's handler after a restore; nothing is read ahead here."""
