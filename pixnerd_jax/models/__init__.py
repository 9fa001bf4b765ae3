"""PixNerd networks (Flax linen)."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from pixnerd_jax.models.pixnerd import (PixNerDiT, params_for_model, patchify,
                                       stack_dit_blocks, unpatchify, unstack_dit_blocks)

# Config fields that are not constructor arguments.
_NOT_MODEL_FIELDS = ("preset",)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(model_config, **extra) -> PixNerDiT:
  """A PixNerDiT from a config block (ConfigDict or dict); dtype given by name."""
  fields = {k: v for k, v in dict(model_config).items() if k not in _NOT_MODEL_FIELDS}
  dtype = fields.pop("dtype", "float32")
  if dtype not in _DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
  return PixNerDiT(dtype=_DTYPES[dtype], **fields, **extra)


def dummy_inputs(model: PixNerDiT, batch: int = 1, height: int | None = None,
                 width: int | None = None):
  """Zero (x, t, y) inputs for init; the smallest valid image by default. y is labels
  (B,) or text features (B, txt_max_length, txt_embed_dim)."""
  height = height or model.patch_size
  width = width or model.patch_size
  if model.conditioning == "text":
    y = jnp.zeros((batch, model.txt_max_length, model.txt_embed_dim), jnp.float32)
  else:
    y = jnp.zeros((batch,), jnp.int32)
  return (jnp.zeros((batch, height, width, model.in_channels), jnp.float32),
          jnp.zeros((batch,), jnp.float32), y)


def boxed_param_shapes(model: PixNerDiT):
  """Abstract params still wrapped in their logical-partitioning boxes (for sharding)."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy_inputs(model)))["params"]


def param_shapes(model: PixNerDiT):
  """The param tree as jax.ShapeDtypeStructs, without allocating anything."""
  return nn.meta.unbox(boxed_param_shapes(model))


def init_params(model: PixNerDiT, rng):
  """Fresh float32 params as plain arrays (logical-axis boxes removed).

  A scanned model gets its unscanned twin's values, stacked: scan_blocks changes how the
  trunk compiles, never what a seed trains.
  """
  if model.scan_blocks:
    return stack_dit_blocks(init_params(model.clone(scan_blocks=False), rng),
                            model.num_cond_blocks)
  return nn.meta.unbox(model.init(rng, *dummy_inputs(model))["params"])


def count_params(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


__all__ = ["PixNerDiT", "boxed_param_shapes", "build_model", "count_params", "dummy_inputs",
           "init_params", "param_shapes", "params_for_model", "patchify",
           "stack_dit_blocks", "unpatchify", "unstack_dit_blocks"]
