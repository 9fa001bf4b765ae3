"""Host-local numpy batches -> globally sharded jax.Arrays."""

from typing import Sequence

import jax
import numpy as np

# The batch fields that carry a leading batch axis, of class-labelled and of
# captioned sources (digits_captions adds `label`; `pipeline.batch_keys` gives
# a config's set). `num_skipped` is a per-host scalar meant for logging, so it
# is not part of the global batch.
BATCH_KEYS = ('image', 'raw_image', 'label')
CAPTION_BATCH_KEYS = ('image', 'raw_image', 'input_ids', 'attention_mask')


def make_global_batch(
    local_batch: dict[str, np.ndarray],
    sharding: jax.sharding.Sharding,
    keys: Sequence[str] = BATCH_KEYS,
) -> dict[str, jax.Array]:
  """Assembles each process's local batch into global arrays.

  Args:
    local_batch: this process's batch, arrays with leading dim local_batch.
    sharding: e.g. `NamedSharding(mesh, PartitionSpec('data'))`, splitting
      the batch axis (only) over devices; used for every field.
    keys: the fields to convert (others, e.g. `num_skipped`, are left out).

  Fields that already are global jax.Arrays (the synthetic source's) are only
  resharded if their sharding differs.

  Returns:
    {key: jax.Array with leading dim local_batch * process_count}.
  """
  return {key: _global(local_batch[key], sharding) for key in keys}


def _global(value, sharding: jax.sharding.Sharding) -> jax.Array:
  if isinstance(value, jax.Array):
    if value.sharding == sharding:
      return value
    # jit moves rows between devices, across hosts too (device_put may not).
    return jax.jit(lambda x: x, out_shardings=sharding)(value)
  return jax.make_array_from_process_local_data(sharding, value)
