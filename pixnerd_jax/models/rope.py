"""2-D rotary position embedding of the class-conditional reference (spec 1.4)."""

import jax.numpy as jnp
import numpy as np


def rope_2d_angles(head_dim: int, height: int, width: int, theta: float = 10000.0,
                   scale: float = 16.0) -> np.ndarray:
  """Rotation angles for an (height x width) token grid.

  Positions are linspace(0, scale, n) per axis, so every resolution spans the same
  range (interpolation). For frequency k the pair order is x then y.

  Returns:
    (height * width, head_dim // 2) float32; token l = i * width + j.
  """
  if head_dim % 4:
    raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}.")
  freqs = theta ** (-np.arange(0, head_dim, 4, dtype=np.float32)[: head_dim // 4] / head_dim)
  y_pos = np.linspace(0, scale, height, dtype=np.float32)
  x_pos = np.linspace(0, scale, width, dtype=np.float32)
  yy, xx = np.meshgrid(y_pos, x_pos, indexing="ij")
  ax = xx.reshape(-1, 1) * freqs[None]
  ay = yy.reshape(-1, 1) * freqs[None]
  return np.stack([ax, ay], axis=-1).reshape(height * width, head_dim // 2).astype(np.float32)


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
