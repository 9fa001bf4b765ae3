"""DINOv2 vision transformer (no registers) in Flax: the frozen REPA target encoder.

A numerical port of the torch-hub `dinov2_vitb14` that the reference's REPA trainer
loads (spec 4.2): patch embedding, CLS token, a learned position embedding for a
37x37 grid (518 px) resampled bicubically to the input's grid, pre-norm blocks with
LayerScale, and a final LayerNorm. The output is `x_norm_patchtokens`: the final-norm
tokens without the CLS token.

Param names mirror the torch-hub keys (`blocks_3/attn/qkv/kernel` is
`blocks.3.attn.qkv.weight` transposed), so `convert_dinov2` is a direct mapping.

Position-embedding resampling. The hub model calls torch's bicubic interpolation with a
scale factor of (n + 0.1) / 37 (`interpolate_offset=0.1`), Hugging Face's `Dinov2Model`
with an output size, i.e. a scale of n / 37 (`interpolate_offset=0.0`). Both use torch's
cubic kernel (a = -0.75) without antialiasing; `bicubic_matrix` reproduces it exactly.
(jax.image.resize's "cubic" is the a = -0.5 Keys kernel and antialiases when shrinking.)
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# The torch-hub dinov2_vitb14 (spec 4.2). Head dim 64, as in every DINOv2 size.
VIT_B14 = dict(patch_size=14, hidden_size=768, num_layers=12, num_heads=12, mlp_ratio=4.0,
               pos_grid_size=37, interpolate_offset=0.1)

# Fields of `DinoV2`, in the order they are written to model.json.
CONFIG_FIELDS = ("in_channels", "patch_size", "hidden_size", "num_layers", "num_heads",
                 "mlp_ratio", "layer_norm_eps", "pos_grid_size", "interpolate_offset")

_CUBIC_A = -0.75  # torch's bicubic (and OpenCV's); not the a = -0.5 of jax.image.resize


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """The 4 tap weights of torch's cubic convolution at fraction t in [0, 1).

  Args:
    t: (n,) float32 distance of the sample from its left neighbour.
  Returns:
    (n, 4) float32 weights of taps floor - 1 .. floor + 2 (each row sums to 1).
  """
  a = np.float32(_CUBIC_A)

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  one = np.float32(1)
  rest = one - t  # torch's rounding order: far((1 - t) + 1)
  return np.stack([far(t + one), near(t), near(rest), far(rest + one)], axis=-1)


def bicubic_matrix(in_size: int, out_size: int,
                   scale_factor: float | None = None) -> np.ndarray:
  """torch's 1-D bicubic resampling (align_corners=False, no antialias) as a matrix.

  Mirrors `F.interpolate(mode="bicubic")`: output i samples the input at
  (i + 0.5) * ratio - 0.5, with ratio = 1 / scale_factor when a scale factor is given
  and in_size / out_size otherwise, computed in float32 like torch's kernel; taps past
  the border repeat the edge value.

  Returns:
    (out_size, in_size) float32 M, so that resized = M @ signal along that axis.
  """
  if scale_factor is not None and scale_factor > 0:
    ratio = np.float32(1.0 / scale_factor)
  else:
    ratio = np.float32(in_size) / np.float32(out_size)
  source = ratio * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  left = np.floor(source)
  weights = _cubic_weights((source - left).astype(np.float32))
  taps = np.clip(left.astype(np.int64)[:, None] + np.arange(-1, 3)[None], 0, in_size - 1)
  matrix = np.zeros((out_size, in_size), np.float64)
  for k in range(4):  # clipped taps may coincide: accumulate
    np.add.at(matrix, (np.arange(out_size), taps[:, k]), weights[:, k])
  return matrix.astype(np.float32)


def resize_bicubic(x, height: int, width: int, *, axes: tuple[int, int] = (1, 2),
                   scale_factors: tuple[float, float] | None = None):
  """Resizes two axes of x like torch's bicubic F.interpolate (see bicubic_matrix).

  Args:
    x: array whose `axes` are (height, width), e.g. (B, H, W, C) with axes (1, 2).
    scale_factors: torch's `scale_factor` per axis; None means size-based.
  Returns:
    x with those axes resized to (height, width), float32.
  """
  ax_h, ax_w = axes
  sf_h, sf_w = scale_factors if scale_factors is not None else (None, None)
  m_h = jnp.asarray(bicubic_matrix(x.shape[ax_h], height, sf_h))
  m_w = jnp.asarray(bicubic_matrix(x.shape[ax_w], width, sf_w))
  x = x.astype(jnp.float32)
  # Full float32 matmuls: on GPU the default precision would round the taps to TF32/bf16.
  hi = jax.lax.Precision.HIGHEST
  x = jnp.moveaxis(jnp.tensordot(m_h, x, axes=([1], [ax_h]), precision=hi), 0, ax_h)
  return jnp.moveaxis(jnp.tensordot(m_w, x, axes=([1], [ax_w]), precision=hi), 0, ax_w)


def interpolate_pos_embed(pos_embed, grid_h: int, grid_w: int, offset: float = 0.1):
  """Resamples a learned square position grid to (grid_h, grid_w) as DINOv2 does.

  offset 0.1: torch-hub (scale factor (n + 0.1) / G); 0.0: Hugging Face (output size n).
  (For non-square grids the hub code passes its two scale factors in (w, h) order to
  (h, w) axes; here each axis gets its own. REPA's images are square.)
  Args:
    pos_embed: (1 + G*G, D), the CLS position first.
  Returns:
    (1 + grid_h * grid_w, D) float32.
  """
  g = grid_size(pos_embed.shape[0] - 1)
  # Both torch versions use the trained grid as it is at its own size (with the offset,
  # resampling would shift it slightly).
  if grid_h == g and grid_w == g:
    return pos_embed
  scales = None
  if offset:
    scales = ((grid_h + offset) / g, (grid_w + offset) / g)
  patch = resize_bicubic(pos_embed[1:].reshape(g, g, -1), grid_h, grid_w, axes=(0, 1),
                         scale_factors=scales)
  return jnp.concatenate([pos_embed[:1], patch.reshape(grid_h * grid_w, -1)], axis=0)


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
  # Two-pass variance as torch computes it; the fast E[x^2] - E[x]^2 loses digits.
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class LayerScale(nn.Module):
  """x * gamma (per channel); `gamma` is torch-hub's `ls{1,2}.gamma`."""

  @nn.compact
  def __call__(self, x):
    gamma = self.param("gamma", nn.initializers.constant(1.0), (x.shape[-1],))
    return x * gamma


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (rows [q; k; v])."""
  num_heads: int

  @nn.compact
  def __call__(self, x):
    """x: (B, N, D) -> (B, N, D)."""
    batch, length, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = nn.Dense(3 * dim, name="qkv")(x).reshape(batch, length, 3, self.num_heads, head_dim)
    out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    return nn.Dense(dim, name="proj")(out.reshape(batch, length, dim))


class Mlp(nn.Module):
  hidden_size: int

  @nn.compact
  def __call__(self, x):
    """x: (B, N, D) -> (B, N, D); exact (erf) GELU, as torch's nn.GELU()."""
    h = nn.gelu(nn.Dense(self.hidden_size, name="fc1")(x), approximate=False)
    return nn.Dense(x.shape[-1], name="fc2")(h)


class Block(nn.Module):
  """Pre-norm transformer block: x + ls1(attn(norm1 x)), then x + ls2(mlp(norm2 x))."""
  num_heads: int
  mlp_hidden_size: int
  layer_norm_eps: float

  @nn.compact
  def __call__(self, x):
    """x: (B, N, D) -> (B, N, D)."""
    h = Attention(self.num_heads, name="attn")(_layer_norm(self.layer_norm_eps, "norm1")(x))
    x = x + LayerScale(name="ls1")(h)
    h = Mlp(self.mlp_hidden_size, name="mlp")(_layer_norm(self.layer_norm_eps, "norm2")(x))
    return x + LayerScale(name="ls2")(h)


class DinoV2(nn.Module):
  """DINOv2 ViT without registers; returns the final-norm patch tokens.

  Attributes:
    patch_size: pixels per patch side (14).
    hidden_size: token width D (768 for ViT-B).
    num_layers, num_heads: transformer depth and heads (head dim = D / num_heads).
    mlp_ratio: MLP hidden width / D.
    pos_grid_size: side of the learned position-embedding grid (518 / 14 = 37).
    interpolate_offset: 0.1 resamples the position embedding like the torch-hub model
      (scale factor (n + 0.1) / grid), 0.0 like Hugging Face's Dinov2Model (size n).
  Init is a placeholder (the encoder is always loaded from converted weights).
  """
  in_channels: int = 3
  patch_size: int = 14
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  layer_norm_eps: float = 1e-6
  pos_grid_size: int = 37
  interpolate_offset: float = 0.1

  @nn.compact
  def __call__(self, images):
    """images: (B, H, W, 3) ImageNet-normalised, H and W multiples of patch_size.

    Returns:
      x_norm_patchtokens: (B, (H / patch) * (W / patch), hidden_size), row-major grid.
    """
    batch, height, width, _ = images.shape
    p = self.patch_size
    if height % p or width % p:
      raise ValueError(f"DINOv2 input {height}x{width} is not a multiple of patch size {p}.")
    grid_h, grid_w = height // p, width // p
    normal = nn.initializers.normal(0.02)
    cls_token = self.param("cls_token", normal, (self.hidden_size,))
    pos_embed = self.param("pos_embed", normal, (1 + self.pos_grid_size ** 2, self.hidden_size))

    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID",
                name="patch_embed")(images.astype(jnp.float32))
    x = x.reshape(batch, grid_h * grid_w, self.hidden_size)
    x = jnp.concatenate([jnp.broadcast_to(cls_token, (batch, 1, self.hidden_size)), x], axis=1)
    x = x + interpolate_pos_embed(pos_embed, grid_h, grid_w, self.interpolate_offset)[None]
    mlp_hidden = int(self.hidden_size * self.mlp_ratio)
    for i in range(self.num_layers):
      x = Block(self.num_heads, mlp_hidden, self.layer_norm_eps, name=f"blocks_{i}")(x)
    return _layer_norm(self.layer_norm_eps, "norm")(x)[:, 1:]


def config_dict(model: DinoV2) -> dict:
  """The constructor fields of `model` (what model.json stores)."""
  return {k: getattr(model, k) for k in CONFIG_FIELDS}


def param_shapes(model: DinoV2):
  """The param tree as ShapeDtypeStructs, for the converter (nothing allocated)."""
  size = model.patch_size
  images = jax.ShapeDtypeStruct((1, size, size, model.in_channels), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)["params"]


def grid_size(num_positions: int) -> int:
  """The side of a square position grid holding num_positions (without CLS)."""
  side = math.isqrt(num_positions)
  if side * side != num_positions:
    raise ValueError(f"{num_positions} patch positions do not form a square grid.")
  return side
