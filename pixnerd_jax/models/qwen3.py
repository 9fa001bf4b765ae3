"""Qwen3 decoder (the text-to-image model's frozen text encoder) in Flax linen.

A numerical port of Hugging Face `Qwen3Model` (transformers 5.23): token embedding, N
pre-norm decoder layers (grouped-query attention with per-head q/k RMSNorm before RoPE,
SwiGLU MLP), and a final RMSNorm. `Qwen3Model.__call__` returns what HF returns as
`last_hidden_state`, for every position, padded ones included (spec 7.2: PixNerd attends
to all of them).

Param names mirror the HF keys, so conversion is mechanical (text_encoder.py):
  embed_tokens.weight                       embed_tokens/embedding            (V, D)
  layers.N.input_layernorm.weight           layers_N/input_layernorm/weight   (D,)
  layers.N.self_attn.{q,k,v,o}_proj.weight  layers_N/self_attn/{q,k,v,o}_proj/kernel  (transposed)
  layers.N.self_attn.{q,k}_norm.weight      layers_N/self_attn/{q,k}_norm/weight      (head_dim,)
  layers.N.post_attention_layernorm.weight  layers_N/post_attention_layernorm/weight
  layers.N.mlp.{gate,up,down}_proj.weight   layers_N/mlp/{gate,up,down}_proj/kernel   (transposed)
  norm.weight                               norm/weight

Compute dtype. With dtype=bfloat16 the model follows HF's `.to(torch.bfloat16)` model (what
the reference runs): activations and the residual stream in bf16; RMSNorm statistics in
float32, cast back before the weight multiply; RoPE tables made in float32 and cast; the
attention scores and softmax in float32.
"""

import dataclasses
import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Dtype = Any

# HF Qwen3Config defaults (transformers 5.23) for fields a config.json may leave out.
_HF_DEFAULT_HEAD_DIM = 128  # not hidden / heads: HF's Qwen3Config declares head_dim = 128
_HF_DEFAULT_THETA = 10_000.0


class Qwen3ConfigError(ValueError):
  """A config.json that this port cannot run exactly; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
  """The architecture fields of a Hugging Face Qwen3 config.json."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = _HF_DEFAULT_THETA
  max_position_embeddings: int = 32768
  tie_word_embeddings: bool = False
  initializer_range: float = 0.02
  pad_token_id: int | None = None
  bos_token_id: int | None = None
  eos_token_id: int | None = None

  def __post_init__(self):
    if self.num_attention_heads % self.num_key_value_heads:
      raise Qwen3ConfigError(
          f"num_attention_heads={self.num_attention_heads} is not a multiple of "
          f"num_key_value_heads={self.num_key_value_heads}.")
    if self.head_dim % 2:
      raise Qwen3ConfigError(f"head_dim={self.head_dim} must be even for RoPE.")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Qwen3Config":
    """Reads a HF config.json dict; rejects features this port does not implement."""
    model_type = d.get("model_type", "qwen3")
    if model_type != "qwen3":
      raise Qwen3ConfigError(f"config.json has model_type {model_type!r}; only 'qwen3' is "
                             "supported (Qwen3 has q/k norms and no attention biases).")
    unsupported = {
        "hidden_act": (d.get("hidden_act", "silu") != "silu", "only 'silu'"),
        "attention_bias": (bool(d.get("attention_bias", False)), "only false"),
        "use_sliding_window": (bool(d.get("use_sliding_window", False)), "only false"),
        "rope_scaling": (d.get("rope_scaling") is not None, "only null (plain RoPE)"),
        "layer_types": (any(t != "full_attention" for t in d.get("layer_types") or ()),
                        "only 'full_attention'"),
    }
    for field, (bad, allowed) in unsupported.items():
      if bad:
        raise Qwen3ConfigError(f"config.json {field}={d.get(field)!r} is not supported "
                               f"({allowed}); this port implements plain Qwen3 attention.")
    rope = d.get("rope_parameters") or {}
    # transformers >= 5 saves rope_parameters={rope_type, rope_theta}; older files carry
    # a top-level rope_theta. The dict wins, as in HF's standardisation.
    if rope.get("rope_type", rope.get("type", "default")) != "default":
      raise Qwen3ConfigError(f"config.json rope_parameters={rope!r} is not supported (only "
                             "rope_type 'default').")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
      raise Qwen3ConfigError(f"config.json rope_parameters={rope!r}: partial rotary "
                             "embeddings are not supported.")
    theta = rope.get("rope_theta", d.get("rope_theta", _HF_DEFAULT_THETA))
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads")
    absent = [k for k in required if d.get(k) is None]
    if absent:
      raise Qwen3ConfigError(f"config.json lacks {absent}; is it a Qwen3 config?")
    eos = d.get("eos_token_id")
    if isinstance(eos, (list, tuple)):
      eos = eos[0] if eos else None
    return cls(
        vocab_size=int(d["vocab_size"]),
        hidden_size=int(d["hidden_size"]),
        intermediate_size=int(d["intermediate_size"]),
        num_hidden_layers=int(d["num_hidden_layers"]),
        num_attention_heads=int(d["num_attention_heads"]),
        num_key_value_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
        # An absent head_dim is 128 in HF's Qwen3Config (its dataclass default), so the same
        # folder builds the same model here; real Qwen3 configs always write it.
        head_dim=int(d.get("head_dim") or _HF_DEFAULT_HEAD_DIM),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        initializer_range=float(d.get("initializer_range", 0.02)),
        pad_token_id=d.get("pad_token_id"),
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=eos,
    )

  @classmethod
  def from_hf_json(cls, path: str) -> "Qwen3Config":
    with open(path, encoding="utf-8") as f:
      try:
        d = json.load(f)
      except json.JSONDecodeError as e:
        raise Qwen3ConfigError(f"{path} is not valid JSON ({e}).") from e
    return cls.from_dict(d)

  def to_hf_dict(self) -> dict:
    """A config.json dict that transformers' Qwen3Config reads back as this config."""
    d = dataclasses.asdict(self)
    del d["rope_theta"]
    d.update(model_type="qwen3", architectures=["Qwen3Model"], hidden_act="silu",
             attention_bias=False, use_sliding_window=False, attention_dropout=0.0,
             rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta})
    return {k: v for k, v in d.items() if v is not None}


# Qwen3-1.7B's config.json (the reference's text encoder, spec 7.2).
QWEN3_1_7B = Qwen3Config(
    vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
    num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
    rope_theta=1_000_000.0, max_position_embeddings=40960, tie_word_embeddings=True,
    bos_token_id=151643, eos_token_id=151645)


class RMSNorm(nn.Module):
  """HF Qwen3RMSNorm: float32 statistics, cast back to the input dtype, then * weight."""
  eps: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                        (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return weight.astype(self.dtype) * normed.astype(x.dtype).astype(self.dtype)


def rope_tables(length: int, head_dim: int, theta: float, dtype: Dtype):
  """cos and sin for positions 0..length-1 in HF's layout (frequencies repeated twice).

  Returns:
    (cos, sin), each (length, head_dim), made in float32 and cast to dtype.
  """
  exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  inv_freq = 1.0 / (jnp.float32(theta) ** exponent)
  angles = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None]
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rope(x, cos, sin):
  """Rotate-half RoPE: x * cos + rotate_half(x) * sin, rotate_half(a, b) = (-b, a).

  Args:
    x: (B, L, H, head_dim); cos, sin: (L, head_dim).
  """
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[None, :, None] + rotated * sin[None, :, None]


def _dense(features: int, axes: tuple[str, str], name: str, config: Qwen3Config,
           dtype: Dtype, param_dtype: Dtype) -> nn.Dense:
  init = nn.initializers.normal(config.initializer_range)
  return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=nn.with_logical_partitioning(init, axes), name=name)


class Attention(nn.Module):
  """Causal grouped-query self-attention with q/k RMSNorm and RoPE."""
  config: Qwen3Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cos, sin, allowed):
    """x: (B, L, D); cos, sin: (L, head_dim); allowed: (B, L, L) bool -> (B, L, D)."""
    cfg = self.config
    batch, length, _ = x.shape
    heads, kv_heads, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    kw = dict(config=cfg, dtype=self.dtype, param_dtype=self.param_dtype)
    norm_kw = dict(eps=cfg.rms_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    q = _dense(heads * hd, ("embed", "qkv"), "q_proj", **kw)(x).reshape(batch, length, heads, hd)
    k = _dense(kv_heads * hd, ("embed", "qkv"), "k_proj", **kw)(x)
    v = _dense(kv_heads * hd, ("embed", "qkv"), "v_proj", **kw)(x)
    k = k.reshape(batch, length, kv_heads, hd)
    v = v.reshape(batch, length, kv_heads, hd)
    q = apply_rope(RMSNorm(name="q_norm", **norm_kw)(q), cos, sin)
    k = apply_rope(RMSNorm(name="k_norm", **norm_kw)(k), cos, sin)

    # Query head h reads kv head h // groups (HF's repeat_kv), so split heads as (kv, group).
    groups = heads // kv_heads
    q = q.reshape(batch, length, kv_heads, groups, hd)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32)
    scores = scores * (hd ** -0.5)
    mask = allowed[:, None, None]  # (B, 1, 1, L, L)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    # A query that may attend to no key (every position of an all-padding row, e.g. the
    # empty prompt) gets a zero output. That is what HF's default attention does:
    # transformers 5.23 runs torch SDPA with a boolean mask, and torch (>= 2.5, the
    # "_safe_softmax" change, pytorch PR 133882) returns 0 for fully masked rows, on CPU and
    # in the fused GPU kernels. HF's eager path instead adds finfo.min and so averages V
    # over ALL positions uniformly; the reference uses the default (SDPA), reproduced here.
    probs = jnp.where(jnp.any(mask, axis=-1, keepdims=True), probs, 0.0)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs.astype(self.dtype), v,
                     preferred_element_type=jnp.float32).astype(self.dtype)
    out = out.reshape(batch, length, heads * hd)
    return _dense(cfg.hidden_size, ("heads", "embed"), "o_proj", **kw)(out)


class MLP(nn.Module):
  """SwiGLU: down(silu(gate x) * up x)."""
  config: Qwen3Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kw = dict(config=cfg, dtype=self.dtype, param_dtype=self.param_dtype)
    gate = _dense(cfg.intermediate_size, ("embed", "mlp"), "gate_proj", **kw)(x)
    up = _dense(cfg.intermediate_size, ("embed", "mlp"), "up_proj", **kw)(x)
    return _dense(cfg.hidden_size, ("mlp", "embed"), "down_proj", **kw)(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
  """x + attn(norm x), then x + mlp(norm x)."""
  config: Qwen3Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cos, sin, allowed):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = RMSNorm(cfg.rms_norm_eps, name="input_layernorm", **kw)(x)
    x = x + Attention(cfg, name="self_attn", **kw)(h, cos, sin, allowed)
    h = RMSNorm(cfg.rms_norm_eps, name="post_attention_layernorm", **kw)(x)
    return x + MLP(cfg, name="mlp", **kw)(h)


class Qwen3Model(nn.Module):
  """HF Qwen3Model's forward without a KV cache: input ids -> last hidden state.

  Attributes:
    config: the architecture (Qwen3Config).
    dtype: compute dtype (float32, or bfloat16 as the reference runs it).
    param_dtype: dtype of freshly initialised params.
  Init (for random stand-in encoders): normal(initializer_range) for the embedding and
  every projection, ones for the norms, as HF's _init_weights; the padding row is NOT
  zeroed, so an all-padding prompt still has a non-trivial encoding.
  """
  config: Qwen3Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask=None):
    """input_ids: (B, L) int; attention_mask: (B, L) {0, 1} (None = all ones).

    Positions are 0..L-1 for every row (right padding). Query i attends to keys j <= i
    whose mask is 1.
    Returns:
      (B, L, hidden_size) in dtype: the final-norm hidden state at every position.
    """
    cfg = self.config
    _, length = input_ids.shape
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    init = nn.initializers.normal(cfg.initializer_range)
    x = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                 embedding_init=nn.with_logical_partitioning(init, ("vocab", "embed")),
                 name="embed_tokens")(input_ids)
    causal = jnp.tril(jnp.ones((length, length), bool))
    allowed = causal[None] & (attention_mask[:, None, :] != 0)
    cos, sin = rope_tables(length, cfg.head_dim, cfg.rope_theta, self.dtype)
    for i in range(cfg.num_hidden_layers):
      x = DecoderLayer(cfg, dtype=self.dtype, param_dtype=self.param_dtype,
                       name=f"layers_{i}")(x, cos, sin, allowed)
    return RMSNorm(cfg.rms_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="norm")(x)


def boxed_param_shapes(model: Qwen3Model):
  """Abstract params with their logical-axis boxes (for shardings); nothing allocated."""
  ids = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids))["params"]


def param_shapes(model: Qwen3Model):
  """The param tree as ShapeDtypeStructs (boxes removed); nothing allocated."""
  return nn.meta.unbox(boxed_param_shapes(model))


def init_params(model: Qwen3Model, rng):
  """Fresh params as plain arrays (logical-axis boxes removed)."""
  ids = jnp.zeros((1, 1), jnp.int32)
  return nn.meta.unbox(model.init(rng, ids, ids)["params"])


def count_params(config: Qwen3Config) -> int:
  """Parameters of Qwen3Model(config) (no lm_head), counted without allocating."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(param_shapes(Qwen3Model(config))))
