"""Runs a few train steps of the tiny config on a given mesh; used by test_sharding.py.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_worker.py \
      OUT.npz DATA FSDP TENSOR [NUM_DEVICES]
"""

import functools
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
from flax import traverse_util

from configs import tiny
from pixnerd_jax import data, models, sharding, train


def main(out, data_size, fsdp, tensor, num_devices=8):
  config = tiny.get_config()
  config.model.hidden_size = 64
  config.model.num_groups = 4
  mesh = sharding.create_mesh({"data": data_size, "fsdp": fsdp, "tensor": tensor},
                              jax.devices()[:num_devices])
  model = train.create_model(config)
  tx, schedule = train.create_optimizer(config)
  make_state = lambda: train.create_train_state(train.init_params(model, 0), tx)
  params_sharding = sharding.param_shardings(models.boxed_param_shapes(model), mesh)
  state_sharding = sharding.state_shardings(jax.eval_shape(make_state), params_sharding, tx,
                                            mesh)
  state = jax.jit(make_state, out_shardings=state_sharding)()
  step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, schedule=schedule,
                                   config=config),
                 out_shardings=(state_sharding, sharding.replicated(mesh)))
  it = data.create_train_iterator(config.data, global_batch_size=16, seed=0,
                                  process_index=0, process_count=1)
  losses = []
  with sharding.activate(mesh):
    for _ in range(3):
      local = next(it)
      batch = data.make_global_batch(local, sharding.batch_sharding(mesh),
                                     keys=("image", "label"))
      state, metrics = step(state, batch)
      losses.append(float(metrics["loss"]))
  qkv = state.params["blocks_0"]["attn"]["qkv"]["kernel"]
  flat = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
  np.savez(out, losses=np.array(losses), qkv_shard_shape=np.array(
      qkv.addressable_shards[0].data.shape), qkv_spec=str(qkv.sharding.spec),
           **{f"param/{k}": v for k, v in flat.items()})


if __name__ == "__main__":
  main(sys.argv[1], *map(int, sys.argv[2:]))
