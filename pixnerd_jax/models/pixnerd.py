"""PixNerd class-conditional diffusion transformer (spec 1.1).

Images are NHWC here; the reference is NCHW. Patch features keep the reference's
channel-major order (c, ky, kx) so official weights load unchanged.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from pixnerd_jax.models import layers
from pixnerd_jax.models.dit import FlattenDiTBlock
from pixnerd_jax.models.nerf import NerfBlock, NerfEmbedder, NerfFinalLayer
from pixnerd_jax.models.rope import rope_2d_angles


def patchify(x, patch_size: int):
  """(B, H, W, C) -> (B, L, C * p * p); tokens row-major, features channel-major."""
  b, h, w, c = x.shape
  p = patch_size
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens, height: int, width: int, patch_size: int):
  """Inverse of `patchify`: (B, L, C * p * p) -> (B, H, W, C)."""
  b = tokens.shape[0]
  p = patch_size
  c = tokens.shape[-1] // (p * p)
  x = tokens.reshape(b, height // p, width // p, c, p, p).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, height, width, c)


REMAT_POLICIES = ("none", "decoder", "blocks", "dots_saveable")


def _block_classes(remat_policy: str):
  """(DiT block, NerfBlock) classes, wrapped in nn.remat as the policy asks."""
  if remat_policy not in REMAT_POLICIES:
    raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {remat_policy!r}.")
  if remat_policy == "none":
    return FlattenDiTBlock, NerfBlock
  nerf = nn.remat(NerfBlock)
  if remat_policy == "decoder":
    return FlattenDiTBlock, nerf
  policy = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable
            if remat_policy == "dots_saveable" else None)
  return nn.remat(FlattenDiTBlock, policy=policy), nn.remat(NerfBlock, policy=policy)


class DiTScanStep(nn.Module):
  """One DiT block as an nn.scan body: carry (s, features) -> (s, features).

  `features` holds the residual stream after block `features_after_block` (1-based);
  it rides in the carry because a sow inside a scan would stack every layer's output.
  """
  num_heads: int
  attention_implementation: str | None = None
  remat_policy: str = "none"
  features_after_block: int | None = None
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, carry, layer_index, cond, rope_angles):
    """carry: ((B, L, D), (B, L, D) or None), layer_index: () int32."""
    s, features = carry
    # The while loop's carry gets no sharding from outside; without these the partitioner
    # may follow the fsdp-sharded weights and split activations by feature, not batch.
    s = nn.with_logical_constraint(s, ("batch", "length", "act_embed"))
    cond = nn.with_logical_constraint(cond, ("batch", None, "act_embed"))
    dit_block, _ = _block_classes(self.remat_policy)
    s = dit_block(self.num_heads, attention_implementation=self.attention_implementation,
                  dtype=self.dtype, param_dtype=self.param_dtype, name="block")(
                      s, cond, rope_angles)
    s = nn.with_logical_constraint(s, ("batch", "length", "act_embed"))
    if features is not None:
      features = jnp.where(layer_index == self.features_after_block - 1, s, features)
      features = nn.with_logical_constraint(features, ("batch", "length", "act_embed"))
    return (s, features), None


SCANNED_BLOCKS = "dit_blocks"


def stack_dit_blocks(params, num_cond_blocks: int):
  """Per-block layout (`blocks_0`..) -> scan layout (`dit_blocks/block`, leading axis)."""
  params = dict(params)
  if SCANNED_BLOCKS in params:
    return params
  per_block = [params.pop(f"blocks_{i}") for i in range(num_cond_blocks)]
  params[SCANNED_BLOCKS] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *per_block)}
  return params


def unstack_dit_blocks(params):
  """Scan layout -> per-block layout (the converter's and the reference's)."""
  params = dict(params)
  if SCANNED_BLOCKS not in params:
    return params
  stacked = params.pop(SCANNED_BLOCKS)["block"]
  for i in range(jax.tree.leaves(stacked)[0].shape[0]):
    params[f"blocks_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return params


def params_for_model(params, model: "PixNerDiT"):
  """Params in either block layout, rearranged to the one `model` expects."""
  if model.scan_blocks:
    return stack_dit_blocks(params, model.num_cond_blocks)
  return unstack_dit_blocks(params)


class PatchEmbedder(nn.Module):
  """(B, L, C * p * p) -> (B, L, D); xavier-uniform kernel, zero bias."""
  hidden_size: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    return layers.torch_dense(
        self.hidden_size, tokens.shape[-1], axes=("patch", "embed"),
        kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.zeros,
        dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(tokens)


class PixNerDiT(nn.Module):
  """Predicts the flow velocity (data - noise) of a noisy image.

  Field names follow the reference constructor so configs and checkpoints map 1:1.
  Attributes:
    num_groups: attention heads.
    hidden_size_x: neural-field width (dx).
    nerf_mlpratio: neural-field MLP ratio.
    num_blocks: total blocks; the first `num_cond_blocks` are DiT, the rest NerfBlocks.
    features_after_block: if set (1-based), sow the trunk residual stream after that
      DiT block into the 'intermediates' collection as `trunk_features` (REPA hook).
    attention_implementation: None (XLA), "cudnn" (GPU) or "splash" (TPU).
    remat_policy: what to recompute in the backward pass instead of storing: "none",
      "decoder" (the neural-field blocks, whose activations are (B*L, P, dx*r)),
      "blocks" (every block), "dots_saveable" (every block, keeping matmul outputs).
    scan_blocks: run the DiT trunk as one nn.scan over a block whose params are stacked
      on a leading 'layers' axis (`dit_blocks/block/...`): one block is compiled instead
      of num_cond_blocks. `params_for_model` converts between the two layouts.
    dtype: compute dtype; params stay in `param_dtype`.
  """
  in_channels: int = 3
  patch_size: int = 16
  num_groups: int = 16
  hidden_size: int = 1152
  hidden_size_x: int = 64
  nerf_mlpratio: int = 2
  num_blocks: int = 30
  num_cond_blocks: int = 26
  num_classes: int = 1000
  max_freqs: int = 8
  features_after_block: int | None = None
  attention_implementation: str | None = None
  remat_policy: str = "none"
  scan_blocks: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t, y):
    """x: (B, H, W, C) noisy image, t: (B,) in [0, 1] (1 = data), y: (B,) int labels
    (num_classes = null). Returns the velocity, (B, H, W, C) in `dtype`."""
    b, height, width, channels = x.shape
    p = self.patch_size
    if height % p or width % p:
      raise ValueError(f"Image size {height}x{width} is not divisible by patch_size {p}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    grid_h, grid_w = height // p, width // p
    head_dim = self.hidden_size // self.num_groups
    rope_angles = jnp.asarray(rope_2d_angles(head_dim, grid_h, grid_w))

    tokens = patchify(x.astype(self.dtype), p)
    t_emb = layers.TimestepEmbedder(self.hidden_size, name="t_embedder", **kw)(t)[:, None]
    y_emb = layers.LabelEmbedder(self.num_classes, self.hidden_size, name="y_embedder",
                                 **kw)(y)[:, None]
    cond = nn.silu(t_emb + y_emb)

    dit_block, nerf_block = _block_classes(self.remat_policy)
    s = PatchEmbedder(self.hidden_size, name="s_embedder", **kw)(tokens)
    s = nn.with_logical_constraint(s, ("batch", "length", "act_embed"))
    if self.scan_blocks:
      s = self._scanned_trunk(s, cond, rope_angles)
    else:
      for i in range(self.num_cond_blocks):
        s = dit_block(self.num_groups, attention_implementation=self.attention_implementation,
                      name=f"blocks_{i}", **kw)(s, cond, rope_angles)
        s = nn.with_logical_constraint(s, ("batch", "length", "act_embed"))
        if self.features_after_block == i + 1:
          self.sow("intermediates", "trunk_features", s)

    # The decoder is conditioned on the timestep only, not the label.
    s = nn.silu(t_emb + s).reshape(b * grid_h * grid_w, self.hidden_size)
    pixels = tokens.reshape(b * grid_h * grid_w, channels, p * p).transpose(0, 2, 1)
    h = NerfEmbedder(self.hidden_size_x, p, self.max_freqs, name="x_embedder", **kw)(pixels)
    for i in range(self.num_cond_blocks, self.num_blocks):
      h = nerf_block(self.nerf_mlpratio, name=f"blocks_{i}", **kw)(h, s)
      h = nn.with_logical_constraint(h, ("batch", None, None))
    out = NerfFinalLayer(channels, name="final_layer", **kw)(h)
    out = out.transpose(0, 2, 1).reshape(b, grid_h * grid_w, channels * p * p)
    return unpatchify(out, height, width, p)

  def _scanned_trunk(self, s, cond, rope_angles):
    """The DiT blocks as one nn.scan; same maths as the loop, stacked params."""
    trunk = nn.scan(
        DiTScanStep, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast), length=self.num_cond_blocks,
        metadata_params={nn.PARTITION_NAME: "layers"})
    features = None
    if self.features_after_block:
      if not 1 <= self.features_after_block <= self.num_cond_blocks:
        raise ValueError(f"features_after_block={self.features_after_block} is not a DiT "
                         f"block (1..{self.num_cond_blocks}).")
      features = jnp.zeros_like(s)
    (s, features), _ = trunk(
        self.num_groups, self.attention_implementation, self.remat_policy,
        self.features_after_block, dtype=self.dtype, param_dtype=self.param_dtype,
        name=SCANNED_BLOCKS)((s, features), jnp.arange(self.num_cond_blocks), cond,
                             rope_angles)
    if features is not None:
      self.sow("intermediates", "trunk_features", features)
    return s
