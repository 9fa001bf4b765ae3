"""The neural-field decoder: per-patch MLPs whose weights the trunk predicts (spec 1.5-1.6).

The t2i model (spec 7.3) differs in flags only: a cosine pixel encoding instead of the
DCT, only the first generated matrix normalised, no norm before the output layer.
"""

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from pixnerd_jax.models import layers
from pixnerd_jax.models.rope import rope_2d_angles


def dct_pixel_encoding(patch_size: int, max_freqs: int = 8) -> np.ndarray:
  """DCT-style features of each pixel's coordinate inside a patch.

  Frequencies are linspace(0, max_freqs, max_freqs) (not integers) and each cosine
  product is damped by 1 / (1 + f_x * f_y); the x frequency is the slow index.

  Returns:
    (patch_size**2, max_freqs**2) float32, pixels in row-major (y, x) order.
  """
  coords = np.linspace(0, 1, patch_size, dtype=np.float32)
  u_y, u_x = np.meshgrid(coords, coords, indexing="ij")
  u_x, u_y = u_x.reshape(-1, 1, 1), u_y.reshape(-1, 1, 1)
  freqs = np.linspace(0, max_freqs, max_freqs, dtype=np.float32)
  f_x, f_y = freqs[None, :, None], freqs[None, None, :]
  enc = np.cos(np.pi * f_x * u_x) * np.cos(np.pi * f_y * u_y) / (1 + f_x * f_y)
  return enc.reshape(patch_size * patch_size, max_freqs * max_freqs).astype(np.float32)


def cosine_pixel_encoding(height: int, width: int, x_span: float, y_span: float,
                          num_features: int = 64) -> np.ndarray:
  """The t2i reference's pixel encoding: the real part of its RoPE table.

  The reference casts a complex 2-D RoPE table (dim 2 * num_features) to a real dtype,
  which keeps cos only: [cos(x g_0), cos(y g_0), cos(x g_1), ...] with x in
  linspace(0, x_span, width) and y in linspace(0, y_span, height).
  Returns:
    (height * width, num_features) float32, pixels in row-major (y, x) order.
  """
  angles = rope_2d_angles(2 * num_features, height, width, x_span=x_span, y_span=y_span)
  return np.cos(angles).astype(np.float32)


class NerfEmbedder(nn.Module):
  """(N, P, C) pixel values -> (N, P, hidden_size_x): Linear of [pixels, encoding].

  The reference concatenates each pixel's values with its coordinate encoding and applies
  one Linear. The encoding is the same for every patch, so its part of the product,
  encoding @ W_enc + b, is a (P, hidden_size_x) table computed once and broadcast; only
  the C pixel channels are multiplied per pixel. Same params (`embedder_0`, kernel
  (C + F, hidden_size_x)), same maths; it avoids an (N * P, C + F) concatenation and a
  GEMM over it, and its kernel gradient, whose contraction runs over every pixel.
  """
  hidden_size_x: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels, encoding):
    """pixels: (N, P, C); encoding: (P, F) coordinate features of the patch's pixels."""
    return _PixelsAndEncodingDense(self.hidden_size_x, dtype=self.dtype,
                                   param_dtype=self.param_dtype, name="embedder_0")(
                                       pixels, encoding)


class _PixelsAndEncodingDense(nn.Module):
  """Dense([pixels, encoding]) with the encoding's product computed once per pixel.

  Params as layers.torch_dense(features, C + F): `kernel` (C + F, features), `bias`.
  """
  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels, encoding):
    """pixels: (N, P, C), encoding: (P, F) -> (N, P, features)."""
    channels = pixels.shape[-1]
    fan_in = channels + encoding.shape[-1]
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(layers.torch_linear_kernel_init,
                                               ("field_in", "field")),
        (fan_in, self.features), self.param_dtype).astype(jnp.float32)
    bias = self.param(
        "bias", nn.with_logical_partitioning(layers.torch_linear_bias_init(fan_in),
                                             ("field",)),
        (self.features,), self.param_dtype).astype(jnp.float32)
    # Sums in float32 whatever the compute dtype, as a GEMM accumulates.
    out = (jnp.asarray(encoding, jnp.float32) @ kernel[channels:] + bias)[None]
    # A contraction over C (3) channels: cheaper as C broadcast multiply-adds than as a
    # GEMM over N * P rows.
    for c in range(channels):
      out = out + pixels[..., c:c + 1].astype(jnp.float32) * kernel[c]
    return out.astype(self.dtype)


def _normalize_inputs_axis(w, eps: float = 1e-12):
  """L2-normalises each output unit's incoming weights. w: (N, in, out)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=-2, keepdims=True))
  return w / jnp.maximum(norm, eps)


class NerfBlock(nn.Module):
  """One residual layer of the per-patch neural field, its weights made from the trunk.

  Attributes:
    mlp_ratio: field MLP width multiplier (hidden = hidden_size_x * mlp_ratio).
    normalize_w2: also L2-normalise the second generated matrix (c2i); the t2i
      reference normalises the first only.
    cast_before_weight: the RMSNorm variant (layers.RMSNorm); False in the t2i model.
  """
  mlp_ratio: int = 2
  normalize_w2: bool = True
  cast_before_weight: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h, s):
    """h: (N, P, dx) field activations; s: (N, D) patch condition -> (N, P, dx)."""
    n, _, dx = h.shape
    hidden = dx * self.mlp_ratio
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    generated = layers.torch_dense(2 * dx * hidden, s.shape[-1], axes=("embed", "nerf_gen"),
                                   name="param_generator1_0",
                                   **kw)(s)
    w1 = generated[:, : dx * hidden].reshape(n, dx, hidden)
    w2 = generated[:, dx * hidden:].reshape(n, hidden, dx)
    w1 = _normalize_inputs_axis(w1.astype(jnp.float32)).astype(self.dtype)
    if self.normalize_w2:
      w2 = _normalize_inputs_axis(w2.astype(jnp.float32)).astype(self.dtype)
    normed = layers.RMSNorm(name="norm", cast_before_weight=self.cast_before_weight, **kw)(h)
    field = nn.silu(jnp.einsum("npi,nio->npo", normed, w1))
    return h + jnp.einsum("npo,nod->npd", field, w2)


class NerfFinalLayer(nn.Module):
  """RMSNorm (c2i only) then a zero-initialised Linear to pixel channels.

  (N, P, dx) -> (N, P, C).
  """
  out_channels: int
  use_norm: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.use_norm:
      h = layers.RMSNorm(name="norm", **kw)(h)
    zeros = nn.initializers.zeros
    return layers.torch_dense(self.out_channels, h.shape[-1], axes=("field", "channels"),
                              kernel_init=zeros, bias_init=zeros, name="linear", **kw)(h)
