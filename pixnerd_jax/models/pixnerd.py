"""PixNerd diffusion transformer (spec 1.1), class- or text-conditional (spec 7.3).

Images are NHWC here; the reference is NCHW. Patch features keep the reference's
channel-major order (c, ky, kx) so official weights load unchanged.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from pixnerd_jax.models import layers
from pixnerd_jax.models.dit import FlattenDiTBlock
from pixnerd_jax.models.nerf import (NerfBlock, NerfEmbedder, NerfFinalLayer,
                                     cosine_pixel_encoding, dct_pixel_encoding)
from pixnerd_jax.models.rope import rope_2d_angles, t2i_rope_angles

CONDITIONINGS = ("class", "text")


def _patch_hw(patch_size) -> tuple[int, int]:
  return (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)


def patchify(x, patch_size):
  """(B, H, W, C) -> (B, L, C * ph * pw); tokens row-major, features channel-major.

  patch_size: an int or (ph, pw).
  """
  b, h, w, c = x.shape
  ph, pw = _patch_hw(patch_size)
  x = x.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(b, (h // ph) * (w // pw), c * ph * pw)


def unpatchify(tokens, height: int, width: int, patch_size):
  """Inverse of `patchify`: (B, L, C * ph * pw) -> (B, H, W, C)."""
  b = tokens.shape[0]
  ph, pw = _patch_hw(patch_size)
  c = tokens.shape[-1] // (ph * pw)
  x = tokens.reshape(b, height // ph, width // pw, c, ph, pw).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, height, width, c)


def nearest_resize(x, height: int, width: int):
  """torch.nn.functional.interpolate(mode="nearest") on NHWC: source index
  min(floor(i * in / out), in - 1), the ratio in float32 as torch computes it."""
  def indices(size_in, size_out):
    ratio = np.float32(size_in) / np.float32(size_out)
    src = np.floor(np.arange(size_out, dtype=np.float32) * ratio).astype(np.int64)
    return np.minimum(src, size_in - 1)
  x = jnp.take(x, indices(x.shape[1], height), axis=1)
  return jnp.take(x, indices(x.shape[2], width), axis=2)


def heavy_decoder_geometry(height: int, width: int, patch_size: int,
                           scaling: tuple[float, float]):
  """Sizes of the heavy-decoder forward (spec 7.4) for an output of height x width.

  The trunk sees a nearest-resized (int(H / sh), int(W / sw)) copy cut into
  patch_size patches; the field decodes (int(p sh), int(p sw))-pixel patches of the
  full image, one per token.
  Returns:
    ((encoder_h, encoder_w), (decoder_ph, decoder_pw)).
  Raises:
    ValueError naming the sizes that work.
  """
  sh, sw = scaling
  if sh <= 0 or sw <= 0:
    raise ValueError(f"decoder_patch_scaling must be positive, got {scaling}.")
  enc_h, enc_w = int(height / sh), int(width / sw)
  dph, dpw = int(patch_size * sh), int(patch_size * sw)
  ok = (enc_h % patch_size == 0 and enc_w % patch_size == 0 and dph > 0 and dpw > 0
        and height == dph * (enc_h // patch_size) and width == dpw * (enc_w // patch_size))
  if not ok:
    raise ValueError(
        f"A {height}x{width} image cannot be made with decoder_patch_scaling={scaling} and "
        f"patch_size {patch_size}: the trunk's copy would be {enc_h}x{enc_w} and the field "
        f"patches {dph}x{dpw}. Use a scaling s with H / s and W / s multiples of "
        f"{patch_size} and p * s whole numbers, e.g. s = H / trunk_size with H a multiple of "
        f"trunk_size / {patch_size}.")
  return (enc_h, enc_w), (dph, dpw)


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
  fused_mlp: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, carry, layer_index, cond, rope_angles, context):
    """carry: ((B, L, D), (B, L, D) or None), layer_index: () int32, context: (B, T, D)
    text tokens or None."""
    s, features = carry
    # The while loop's carry gets no sharding from outside; without these the partitioner
    # may follow the fsdp-sharded weights and split activations by feature, not batch.
    s = nn.with_logical_constraint(s, ("batch", "length", "act_embed"))
    cond = nn.with_logical_constraint(cond, ("batch", None, "act_embed"))
    dit_block, _ = _block_classes(self.remat_policy)
    s = dit_block(self.num_heads, attention_implementation=self.attention_implementation,
                  fused_mlp=self.fused_mlp, dtype=self.dtype, param_dtype=self.param_dtype,
                  name="block")(s, cond, rope_angles, context)
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


INTERVAL_EMBEDDER = "h_embedder"


def interval_embedder_params(model: "PixNerDiT", seed: int = 0):
  """Fresh params of the average-velocity model's interval embedder: the first layer
  initialised as usual, the output layer zero. (An all-zero embedder would never train:
  silu(0) = 0 feeds the zero output layer, so neither layer gets a gradient.)"""
  embedder = layers.TimestepEmbedder(model.hidden_size, zero_output=True,
                                     param_dtype=model.param_dtype)
  variables = embedder.init(jax.random.key(seed), jnp.zeros((1,), jnp.float32))
  return nn.meta.unbox(variables["params"])


def params_for_model(params, model: "PixNerDiT"):
  """Params in either block layout, rearranged to the one `model` expects.

  A flow-matching checkpoint loaded into an average-velocity model gets the interval
  embedder with its output layer at zero, so the model starts as the checkpoint:
  u(z, t, h=0) = v(z, t), and for every h until the embedder has trained.
  """
  if model.average_velocity and INTERVAL_EMBEDDER not in params:
    params = dict(params, **{INTERVAL_EMBEDDER: interval_embedder_params(model)})
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


class TextEmbedder(nn.Module):
  """Text-encoder features -> trunk width: Linear, RMSNorm. (B, T, E) -> (B, T, D)."""
  hidden_size: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, text):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = layers.torch_dense(self.hidden_size, text.shape[-1], axes=("text_embed", "embed"),
                           name="proj", **kw)(text)
    return layers.RMSNorm(name="norm", cast_before_weight=False, **kw)(y)


class PixNerDiT(nn.Module):
  """Predicts the flow velocity (data - noise) of a noisy image.

  Field names follow the reference's c2i constructor so configs and checkpoints map 1:1
  (the t2i reference's num_encoder_blocks / num_decoder_blocks / decoder_hidden_size are
  num_cond_blocks / num_blocks - num_cond_blocks / hidden_size_x here).
  Attributes:
    num_groups: attention heads.
    hidden_size_x: neural-field width (dx).
    nerf_mlpratio: neural-field MLP ratio.
    num_blocks: total blocks; the first `num_cond_blocks` are DiT, the rest NerfBlocks.
    conditioning: "class" (y: (B,) int labels, num_classes = null) or "text" (y:
      (B, txt_max_length, txt_embed_dim) text-encoder features; spec 7.3: refined by
      num_text_blocks blocks, then read as extra keys/values by every DiT block).
    decoder_patch_scaling: text only: None, or (sh, sw) for the heavy decoder (spec 7.4):
      the trunk sees a nearest-resized (H / sh, W / sw) copy and the field decodes
      (p sh) x (p sw)-pixel patches, so one model renders other sizes and aspect ratios.
    decoder_coordinate_span: heavy decoder only: pixel coordinates span
      linspace(0, span, n) whatever the patch size. None = patch_size, which keeps
      scaling (1, 1) identical to the plain model; the reference hard-codes 16 (its patch
      size), which differs only for other patch sizes.
    decoder_chunk_size: None, or run the neural field over at most this many patches at
      a time (an nn.scan over chunks sharing the params; the same results): bounds the
      field's activations, (B * L, P, 2 dx) floats, for large outputs.
    features_after_block: if set (1-based), sow the trunk residual stream after that
      DiT block into the 'intermediates' collection as `trunk_features` (REPA hook).
    attention_implementation: None (XLA), "cudnn" (GPU) or "splash" (TPU).
    remat_policy: what to recompute in the backward pass instead of storing: "none",
      "decoder" (the neural-field blocks, whose activations are (B*L, P, dx*r)),
      "blocks" (every block), "dots_saveable" (every block, keeping matmul outputs).
    scan_blocks: run the DiT trunk as one nn.scan over a block whose params are stacked
      on a leading 'layers' axis (`dit_blocks/block/...`): one block is compiled instead
      of num_cond_blocks. `params_for_model` converts between the two layouts.
    average_velocity: MeanFlow's average-velocity model (diffusion/meanflow.py): a second
      timestep embedder (`h_embedder`, output layer zero-initialised) embeds the interval
      h = r - t (r >= t the cleaner time) and is summed with the time embedding, so it
      reaches the adaLN conditions and the field's silu(t_emb + s). The model then
      predicts the average velocity over [t, t + h]; at h = 0 the velocity, and, fresh
      from a flow-matching checkpoint, exactly that checkpoint's velocity.
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
  conditioning: str = "class"
  txt_embed_dim: int = 2048
  txt_max_length: int = 128
  num_text_blocks: int = 4
  decoder_patch_scaling: tuple[float, float] | None = None
  decoder_coordinate_span: float | None = None
  decoder_chunk_size: int | None = None
  features_after_block: int | None = None
  attention_implementation: str | None = None
  remat_policy: str = "none"
  scan_blocks: bool = False
  average_velocity: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @property
  def text_conditioned(self) -> bool:
    return self.conditioning == "text"

  @nn.compact
  def __call__(self, x, t, y, h=None):
    """x: (B, H, W, C) noisy image, t: (B,) in [0, 1] (1 = data); y: (B,) int labels
    (num_classes = null) or (B, txt_max_length, txt_embed_dim) text features; h: (B,)
    interval toward the data (average_velocity models only; None = 0).
    Returns the velocity (the average velocity over [t, t + h]), (B, H, W, C) in `dtype`."""
    if self.conditioning not in CONDITIONINGS:
      raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got "
                       f"{self.conditioning!r}.")
    b, height, width, channels = x.shape
    p = self.patch_size
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    trunk_x, (enc_h, enc_w), (dph, dpw) = self._trunk_input(x)
    grid_h, grid_w = enc_h // p, enc_w // p
    head_dim = self.hidden_size // self.num_groups
    tokens = patchify(trunk_x, p)
    t_emb = layers.TimestepEmbedder(self.hidden_size, name="t_embedder", **kw)(t)
    if self.average_velocity:
      h = jnp.zeros_like(t) if h is None else h
      t_emb = t_emb + layers.TimestepEmbedder(self.hidden_size, zero_output=True,
                                              name=INTERVAL_EMBEDDER, **kw)(h)
    elif h is not None:
      raise ValueError("An interval h (the meanflow sampler or objective) needs an "
                       "average-velocity model: set config.model.average_velocity=True and "
                       "train it with config.meanflow (configs/digits_meanflow.py).")
    t_emb = t_emb[:, None]

    context = None
    if self.text_conditioned:
      rope_angles = jnp.asarray(t2i_rope_angles(head_dim, grid_h, grid_w))
      cond = nn.silu(t_emb)
      context = self._refined_text(y, cond)
    else:
      rope_angles = jnp.asarray(rope_2d_angles(head_dim, grid_h, grid_w))
      y_emb = layers.LabelEmbedder(self.num_classes, self.hidden_size, name="y_embedder",
                                   **kw)(y)[:, None]
      cond = nn.silu(t_emb + y_emb)

    dit_block, _ = _block_classes(self.remat_policy)
    s = PatchEmbedder(self.hidden_size, name="s_embedder", **kw)(tokens)
    s = nn.with_logical_constraint(s, ("batch", "length", "act_embed"))
    if self.scan_blocks:
      s = self._scanned_trunk(s, cond, rope_angles, context)
    else:
      for i in range(self.num_cond_blocks):
        s = dit_block(self.num_groups, attention_implementation=self.attention_implementation,
                      fused_mlp=self.text_conditioned, name=f"blocks_{i}", **kw)(
                          s, cond, rope_angles, context)
        s = nn.with_logical_constraint(s, ("batch", "length", "act_embed"))
        if self.features_after_block == i + 1:
          self.sow("intermediates", "trunk_features", s)

    # The decoder is conditioned on the timestep only, not the label or text.
    s = nn.silu(t_emb + s).reshape(b * grid_h * grid_w, self.hidden_size)
    # The field reads the full-resolution pixels; only the heavy decoder's differ.
    pixels = tokens if trunk_x is x and (dph, dpw) == (p, p) else patchify(x, (dph, dpw))
    pixels = pixels.reshape(b * grid_h * grid_w, channels, dph * dpw).transpose(0, 2, 1)
    out = self._neural_field(pixels, s, self._pixel_encoding(dph, dpw))
    out = out.transpose(0, 2, 1).reshape(b, grid_h * grid_w, channels * dph * dpw)
    return unpatchify(out, height, width, (dph, dpw))

  def _neural_field(self, pixels, s, encoding):
    """The per-patch fields: (N, P, C) pixels, (N, D) conditions -> (N, P, C).

    With decoder_chunk_size, an nn.scan runs chunks of that many patches one after the
    other; chunk c holds patches j * num_chunks + c, so each chunk spans the whole
    (device-sharded) batch. Patches never interact, so the output is the same.
    """
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    _, nerf_block = _block_classes(self.remat_policy)

    def decode(module, carry, inputs):
      del module  # the submodules below attach to the module running this function
      pixels, s = inputs
      h = NerfEmbedder(self.hidden_size_x, name="x_embedder", **kw)(pixels, encoding)
      for i in range(self.num_cond_blocks, self.num_blocks):
        h = nerf_block(self.nerf_mlpratio, normalize_w2=not self.text_conditioned,
                       cast_before_weight=not self.text_conditioned, name=f"blocks_{i}",
                       **kw)(h, s)
        h = nn.with_logical_constraint(h, ("batch", None, None))
      return carry, NerfFinalLayer(pixels.shape[-1], use_norm=not self.text_conditioned,
                                   name="final_layer", **kw)(h)

    n, chunk = pixels.shape[0], self.decoder_chunk_size
    if not chunk or n <= chunk:
      return decode(self, None, (pixels, s))[1]
    num_chunks = -(-n // chunk)
    # Zero rows pad to chunk * num_chunks; their (finite) outputs are dropped.
    inputs = tuple(jnp.pad(a, [(0, chunk * num_chunks - n)] + [(0, 0)] * (a.ndim - 1))
                   .reshape((chunk, num_chunks) + a.shape[1:]) for a in (pixels, s))
    _, out = nn.scan(decode, variable_broadcast="params", split_rngs={"params": False},
                     in_axes=1, out_axes=1)(self, None, inputs)
    return out.reshape((chunk * num_chunks,) + out.shape[2:])[:n]

  def _trunk_input(self, x):
    """The image the trunk patchifies, its size, and the field's patch size."""
    _, height, width, _ = x.shape
    p = self.patch_size
    if self.decoder_patch_scaling is None:
      if height % p or width % p:
        raise ValueError(f"Image size {height}x{width} is not divisible by patch_size {p}.")
      return x, (height, width), (p, p)
    if not self.text_conditioned:
      raise ValueError("decoder_patch_scaling is a text-to-image option (spec 7.4); the "
                       "class-conditional model decodes patch_size patches only.")
    (enc_h, enc_w), decoder_patch = heavy_decoder_geometry(
        height, width, p, tuple(self.decoder_patch_scaling))
    trunk_x = x if (enc_h, enc_w) == (height, width) else nearest_resize(x, enc_h, enc_w)
    return trunk_x, (enc_h, enc_w), decoder_patch

  def _pixel_encoding(self, dph: int, dpw: int) -> np.ndarray:
    """(dph * dpw, F) coordinate features of a field patch's pixels."""
    if not self.text_conditioned:
      return dct_pixel_encoding(self.patch_size, self.max_freqs)
    num_features = self.max_freqs ** 2
    if self.decoder_patch_scaling is None:
      p = self.patch_size
      return cosine_pixel_encoding(p, p, float(p), float(p), num_features)
    span = float(self.decoder_coordinate_span or self.patch_size)
    return cosine_pixel_encoding(dph, dpw, span, span, num_features)

  def _refined_text(self, text, cond):
    """(B, T, E) text features -> (B, T, D) tokens the DiT blocks read as keys/values."""
    if text.ndim != 3 or text.shape[1:] != (self.txt_max_length, self.txt_embed_dim):
      raise ValueError(f"Text features must be (B, {self.txt_max_length}, "
                       f"{self.txt_embed_dim}) (txt_max_length, txt_embed_dim), got "
                       f"{tuple(text.shape)}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    positions = self.param(
        "y_pos_embedding",
        nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "length", "embed")),
        (1, self.txt_max_length, self.hidden_size), self.param_dtype)
    y = TextEmbedder(self.hidden_size, name="y_embedder", **kw)(text.astype(self.dtype))
    y = y + positions.astype(y.dtype)
    for i in range(self.num_text_blocks):
      y = FlattenDiTBlock(self.num_groups, attention_implementation=self.attention_implementation,
                          fused_mlp=True, name=f"text_refine_blocks_{i}", **kw)(y, cond)
    return nn.with_logical_constraint(y, ("batch", "length", "act_embed"))

  def _scanned_trunk(self, s, cond, rope_angles, context):
    """The DiT blocks as one nn.scan; same maths as the loop, stacked params."""
    trunk = nn.scan(
        DiTScanStep, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=self.num_cond_blocks,
        metadata_params={nn.PARTITION_NAME: "layers"})
    features = None
    if self.features_after_block:
      if not 1 <= self.features_after_block <= self.num_cond_blocks:
        raise ValueError(f"features_after_block={self.features_after_block} is not a DiT "
                         f"block (1..{self.num_cond_blocks}).")
      features = jnp.zeros_like(s)
    (s, features), _ = trunk(
        self.num_groups, self.attention_implementation, self.remat_policy,
        self.features_after_block, self.text_conditioned, dtype=self.dtype,
        param_dtype=self.param_dtype, name=SCANNED_BLOCKS)(
            (s, features), jnp.arange(self.num_cond_blocks), cond, rope_angles, context)
    if features is not None:
      self.sow("intermediates", "trunk_features", features)
    return s
