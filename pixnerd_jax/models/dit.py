"""The transformer blocks of PixNerd: the DiT trunk block (spec 1.3) and its t2i forms.

One block class serves three roles:
  c2i trunk        self-attention with RoPE, the 2/3-rule SwiGLU (w1, w3, w2);
  t2i trunk        image queries attending to [image; refined text] keys and values,
                   RoPE on the image part only, the fused SwiGLU (w12, w3) of width 4 D;
  t2i text refine  self-attention over text tokens without RoPE, fused SwiGLU.
"""

import jax.numpy as jnp
from flax import linen as nn

from pixnerd_jax.models import attention
from pixnerd_jax.models import layers
from pixnerd_jax.models.rope import apply_rope


def modulate(x, shift, scale):
  return x * (1 + scale) + shift


class Attention(nn.Module):
  """Multi-head attention with q/k RMSNorm, optional 2-D RoPE and optional context.

  With `context`, queries come from x only and keys/values from [x; context] (image
  first); the context keys share x's `k_norm` and get no RoPE. The fused input
  projection is then called `qkv_x` and the context's `kv_y`, as in the reference.
  Attributes:
    num_heads: number of heads; head dim = D / num_heads.
    implementation: None (XLA), "cudnn" (GPU) or "splash" (TPU); see attention.py.
    cast_before_weight: RMSNorm variant of q/k norms (see layers.RMSNorm).
  """
  num_heads: int
  implementation: str | None = None
  cast_before_weight: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, rope_angles=None, context=None):
    """x: (B, L, D), rope_angles: (L, head_dim // 2) or None, context: (B, T, D) or None
    -> (B, L, D)."""
    batch, length, dim = x.shape
    head_dim = dim // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm_kw = dict(cast_before_weight=self.cast_before_weight, **kw)
    qkv = layers.torch_dense(3 * dim, dim, axes=("embed", "qkv"), use_bias=False,
                             name="qkv" if context is None else "qkv_x", **kw)(x)
    q, k, v = jnp.split(qkv.reshape(batch, length, 3, self.num_heads, head_dim), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    k_norm = layers.RMSNorm(name="k_norm", **norm_kw)
    q = layers.RMSNorm(name="q_norm", **norm_kw)(q)
    k = k_norm(k)
    if rope_angles is not None:
      q = apply_rope(q, rope_angles)
      k = apply_rope(k, rope_angles)
    if context is not None:
      kv = layers.torch_dense(2 * dim, dim, axes=("embed", "qkv"), use_bias=False,
                              name="kv_y", **kw)(context)
      k_ctx, v_ctx = jnp.split(kv.reshape(batch, context.shape[1], 2, self.num_heads,
                                          head_dim), 2, axis=2)
      k = jnp.concatenate([k, k_norm(k_ctx[:, :, 0])], axis=1)
      v = jnp.concatenate([v, v_ctx[:, :, 0]], axis=1)
    attended = attention.dot_product_attention(q, k, v, implementation=self.implementation)
    attended = attended.reshape(batch, length, dim)
    return layers.torch_dense(dim, dim, axes=("heads", "embed"), name="proj", **kw)(attended)


class FlattenDiTBlock(nn.Module):
  """adaLN-modulated attention + SwiGLU block; gates are not zero at init.

  Attributes:
    num_heads: attention heads.
    mlp_ratio: SwiGLU width multiplier.
    fused_mlp: the t2i SwiGLU (w12, w3; width mlp_ratio * D) instead of the c2i one
      (w1, w3, w2; width int(2 * mlp_ratio * D / 3)). It also selects the t2i RMSNorm
      variant, which goes with it in the reference.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  attention_implementation: str | None = None
  fused_mlp: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c, rope_angles=None, context=None):
    """x: (B, L, D), c: (B, 1, D), rope_angles: (L, hd // 2) or None, context:
    (B, T, D) or None -> (B, L, D)."""
    dim = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm_kw = dict(cast_before_weight=not self.fused_mlp, **kw)
    mod = layers.torch_dense(6 * dim, dim, axes=("embed", "adaln"), name="adaLN_modulation_0",
                             **kw)(c)
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
    h = modulate(layers.RMSNorm(name="norm1", **norm_kw)(x), shift1, scale1)
    x = x + gate1 * Attention(self.num_heads, self.attention_implementation,
                              cast_before_weight=not self.fused_mlp, name="attn",
                              **kw)(h, rope_angles, context)
    h = modulate(layers.RMSNorm(name="norm2", **norm_kw)(x), shift2, scale2)
    if self.fused_mlp:
      mlp = layers.FusedSwiGLU(int(dim * self.mlp_ratio), name="mlp", **kw)
    else:
      mlp = layers.SwiGLU(layers.swiglu_hidden_size(dim, self.mlp_ratio), name="mlp", **kw)
    return x + gate2 * mlp(h)
