"""Runs a few train steps of the tiny config on given meshes; used by test_sharding.py.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_worker.py \
      OUT_DIR NAME=DATA,FSDP,TENSOR[,NUM_DEVICES[,SCAN_BLOCKS]] ...

Writes OUT_DIR/NAME.npz per mesh. One process runs them all: a start-up of JAX costs more
than a tiny run. Params are saved in the per-block layout whatever SCAN_BLOCKS is, for
comparison.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
from flax import traverse_util

from configs import tiny
from pixnerd_jax import data, models
from pixnerd_jax.runtime import mesh as sharding
from pixnerd_jax.training import train


def main(out, data_size, fsdp, tensor, num_devices=8, scan_blocks=0):
  config = tiny.get_config()
  config.model.hidden_size = 64
  config.model.num_groups = 4
  config.model.scan_blocks = bool(scan_blocks)
  mesh = sharding.create_mesh({"data": data_size, "fsdp": fsdp, "tensor": tensor},
                              jax.devices()[:num_devices])
  program = train.build_train_program(config, mesh)
  state = jax.jit(program.make_state, out_shardings=program.state_sharding)()
  it = data.create_train_iterator(config.data, global_batch_size=16, seed=0,
                                  process_index=0, process_count=1)
  losses = []
  with sharding.activate(mesh):
    for _ in range(3):
      local = next(it)
      batch = data.make_global_batch(local, program.batch_sharding, keys=program.batch_keys)
      state, metrics = program.step(state, batch)
      losses.append(float(metrics["loss"]))
  if scan_blocks:
    qkv = state.params[models.pixnerd.SCANNED_BLOCKS]["block"]["attn"]["qkv"]["kernel"]
  else:
    qkv = state.params["blocks_0"]["attn"]["qkv"]["kernel"]
  flat = traverse_util.flatten_dict(models.unstack_dit_blocks(jax.device_get(state.params)),
                                    sep="/")
  np.savez(out, losses=np.array(losses), qkv_shard_shape=np.array(
      qkv.addressable_shards[0].data.shape), qkv_spec=str(qkv.sharding.spec),
           **{f"param/{k}": v for k, v in flat.items()})


if __name__ == "__main__":
  for spec in sys.argv[2:]:
    name, sizes = spec.split("=")
    main(pathlib.Path(sys.argv[1]) / f"{name}.npz", *map(int, sizes.split(",")))
