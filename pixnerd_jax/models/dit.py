"""The DiT trunk block of the class-conditional PixNerd (spec 1.3)."""

import jax.numpy as jnp
from flax import linen as nn

from pixnerd_jax.models import attention
from pixnerd_jax.models import layers
from pixnerd_jax.models.rope import apply_rope


def modulate(x, shift, scale):
  return x * (1 + scale) + shift


class Attention(nn.Module):
  """Self-attention with q/k RMSNorm and 2-D RoPE.

  Attributes:
    num_heads: number of heads; head dim = D / num_heads.
    implementation: None (XLA), "cudnn" (GPU) or "splash" (TPU); see attention.py.
  """
  num_heads: int
  implementation: str | None = None
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, rope_angles):
    """x: (B, L, D), rope_angles: (L, head_dim // 2) -> (B, L, D)."""
    batch, length, dim = x.shape
    head_dim = dim // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = layers.torch_dense(3 * dim, dim, axes=("embed", "qkv"), use_bias=False, name="qkv",
                             **kw)(x)
    q, k, v = jnp.split(qkv.reshape(batch, length, 3, self.num_heads, head_dim), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    q = layers.RMSNorm(name="q_norm", **kw)(q)
    k = layers.RMSNorm(name="k_norm", **kw)(k)
    q = apply_rope(q, rope_angles)
    k = apply_rope(k, rope_angles)
    attended = attention.dot_product_attention(q, k, v, implementation=self.implementation)
    attended = attended.reshape(batch, length, dim)
    return layers.torch_dense(dim, dim, axes=("heads", "embed"), name="proj", **kw)(attended)


class FlattenDiTBlock(nn.Module):
  """adaLN-modulated attention + SwiGLU block; gates are not zero at init.

  Attributes:
    num_heads: attention heads.
    mlp_ratio: SwiGLU width before the 2/3 rule.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  attention_implementation: str | None = None
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c, rope_angles):
    """x: (B, L, D), c: (B, 1, D), rope_angles: (L, hd // 2) -> (B, L, D)."""
    dim = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    mod = layers.torch_dense(6 * dim, dim, axes=("embed", "adaln"), name="adaLN_modulation_0",
                             **kw)(c)
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
    h = modulate(layers.RMSNorm(name="norm1", **kw)(x), shift1, scale1)
    x = x + gate1 * Attention(self.num_heads, self.attention_implementation, name="attn",
                              **kw)(h, rope_angles)
    h = modulate(layers.RMSNorm(name="norm2", **kw)(x), shift2, scale2)
    hidden = layers.swiglu_hidden_size(dim, self.mlp_ratio)
    return x + gate2 * layers.SwiGLU(hidden, name="mlp", **kw)(h)
