"""2-D rotary position embedding (spec 1.4), and the t2i variant's positions."""

import jax.numpy as jnp
import numpy as np


def rope_2d_angles(head_dim: int, height: int, width: int, theta: float = 10000.0,
                   scale: float = 16.0, *, x_span: float | None = None,
                   y_span: float | None = None) -> np.ndarray:
  """Rotation angles for an (height x width) token grid.

  Column positions are linspace(0, x_span, width), row positions linspace(0, y_span,
  height); both spans default to `scale`, so in the c2i model every resolution covers
  the same range (interpolation). For frequency k the pair order is x then y.

  Returns:
    (height * width, head_dim // 2) float32; token l = i * width + j.
  """
  if head_dim % 4:
    raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}.")
  x_span = scale if x_span is None else x_span
  y_span = scale if y_span is None else y_span
  freqs = theta ** (-np.arange(0, head_dim, 4, dtype=np.float32)[: head_dim // 4] / head_dim)
  y_pos = np.linspace(0, y_span, height, dtype=np.float32)
  x_pos = np.linspace(0, x_span, width, dtype=np.float32)
  yy, xx = np.meshgrid(y_pos, x_pos, indexing="ij")
  ax = xx.reshape(-1, 1) * freqs[None]
  ay = yy.reshape(-1, 1) * freqs[None]
  return np.stack([ax, ay], axis=-1).reshape(height * width, head_dim // 2).astype(np.float32)


def t2i_rope_angles(head_dim: int, height: int, width: int) -> np.ndarray:
  """The t2i reference's token positions: about one unit per token, no normalisation.

  The reference spans columns by the grid's height and rows by its width; the swap is
  invisible on square grids and kept here so non-square inputs match it.
  """
  return rope_2d_angles(head_dim, height, width, x_span=float(height), y_span=float(width))


def apply_rope(x, angles):
  """Rotates adjacent channel pairs (2m, 2m+1) by angles[:, m], in float32.

  Args:
    x: (B, L, heads, head_dim).
    angles: (L, head_dim // 2).
  Returns:
    (B, L, heads, head_dim) in x's dtype.
  """
  pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  re, im = pairs[..., 0], pairs[..., 1]
  cos = jnp.cos(angles)[None, :, None, :]
  sin = jnp.sin(angles)[None, :, None, :]
  rotated = jnp.stack([re * cos - im * sin, re * sin + im * cos], axis=-1)
  return rotated.reshape(x.shape).astype(x.dtype)
