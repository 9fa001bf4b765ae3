"""Multi-head attention kernels: XLA or cuDNN (jax.nn.dot_product_attention), or TPU splash.

The default (implementation None) is XLA's attention; traced for the CPU backend it is
`cpu_attention`, the same maths with a hand-written backward.

All implementations compute softmax(q k^T / sqrt(head_dim)) v per head, with the softmax
in float32. "splash" runs the Pallas TPU splash-attention kernel
(jax.experimental.pallas.ops.tpu.splash_attention) inside `shard_map`: the batch is split
over the mesh's (data, fsdp) axes and the heads over `tensor`, as the activations already
are, so every chip runs the kernel on its own examples. The kernel tiles the head
dimension and the sequences in multiples of 128, so head dims like XL/16's 72 are padded
with zeros (which changes no dot product and adds only zero output columns, sliced off),
and sequences are padded with keys that no query may attend to.

Off TPU (the CPU tests) the same kernel runs in Pallas interpret mode: slow, but the same
program, which is how its equivalence with XLA attention is tested.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from pixnerd_jax.models import platform

IMPLEMENTATIONS = (None, "xla", "cudnn", "splash")
_LANES = 128                        # splash tiles head_dim and sequences by this
_SPLASH_BLOCKS = (512, 256, 128)    # largest that divides the padded sequence is used
_BATCH_AXES = ("data", "fsdp")      # as sharding.BATCH_AXES (no import: models stay leaf)
_HEAD_AXIS = "tensor"


def dot_product_attention(q, k, v, *, implementation: str | None = None, kv_mask=None):
  """Scaled dot-product attention.

  Args:
    q: (B, Lq, H, D) queries; k, v: (B, Lk, H, D).
    implementation: None (XLA; cpu_attention on CPU), "xla" (jax.nn's XLA attention),
      "cudnn" (GPU), "splash" (TPU Pallas kernel).
    kv_mask: optional (B, Lk) bool, True where a key may be attended to.
  Returns:
    (B, Lq, H, D) in q's dtype.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"Unknown attention implementation {implementation!r}; use one of "
                     f"{IMPLEMENTATIONS}.")
  if implementation == "splash":
    return splash_attention(q, k, v, kv_mask=kv_mask)
  if implementation is None and platform.custom_cpu_backward():
    return cpu_attention(q, k, v, kv_mask)
  mask = None if kv_mask is None else kv_mask[:, None, None, :]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def _heads_first(x):
  """(B, L, H, D) <-> (B, H, L, D)."""
  return jnp.swapaxes(x, 1, 2)


def _logits_dtype_kwargs(dtype):
  # As jax.nn.dot_product_attention: bfloat16 inputs give float32 logits.
  if dtype == jnp.bfloat16:
    return dict(precision=jax.lax.DotAlgorithmPreset.BF16_BF16_F32,
                preferred_element_type=jnp.float32)
  return dict(preferred_element_type=jnp.promote_types(dtype, jnp.float32))


def _cpu_attention_forward(q, k, v, kv_mask):
  """The forward of cpu_attention and what its backward needs.

  Returns:
    (out (B, Lq, H, D), (q, k, v heads-first, kv_mask, probs (B, H, Lq, Lk) float32)).
  """
  qh, kh, vh = _heads_first(q), _heads_first(k), _heads_first(v)
  scale = 1.0 / math.sqrt(q.shape[-1])
  logits = jnp.einsum("bhqd,bhkd->bhqk", qh, kh, **_logits_dtype_kwargs(q.dtype))
  logits = logits * jnp.asarray(scale, logits.dtype)
  if kv_mask is not None:
    large_negative = -0.7 * float(jnp.finfo(logits.dtype).max)
    logits = jnp.where(kv_mask[:, None, None, :], logits, large_negative)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  out = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), vh)
  return _heads_first(out), (qh, kh, vh, kv_mask, probs)


@jax.custom_vjp
def cpu_attention(q, k, v, kv_mask=None):
  """jax.nn.dot_product_attention's maths (XLA implementation) with a hand-written
  backward for XLA:CPU: heads-first operands and the saved softmax give every batched
  matmul of the backward a layout XLA:CPU runs well (S/8 at 64 px: 5.3 -> 3.8 ms per
  attention forward + backward on 2 cores). Shapes as dot_product_attention."""
  return _cpu_attention_forward(q, k, v, kv_mask)[0]


def _cpu_attention_bwd(residuals, grad):
  qh, kh, vh, kv_mask, probs = residuals
  scale = 1.0 / math.sqrt(qh.shape[-1])
  gh = _heads_first(grad)
  probs_t = jnp.swapaxes(probs, 2, 3).astype(vh.dtype)
  d_v = jnp.einsum("bhkq,bhqd->bhkd", probs_t, gh)
  d_probs = jnp.einsum("bhqd,bhkd->bhqk", gh, vh, **_logits_dtype_kwargs(gh.dtype))
  d_probs = d_probs.astype(jnp.float32)
  # Softmax backward; masked keys have probability 0 and so get no gradient, as there.
  d_logits = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True)) * scale
  d_logits = d_logits.astype(qh.dtype)
  d_q = jnp.einsum("bhqk,bhkd->bhqd", d_logits, kh)
  d_k = jnp.einsum("bhkq,bhqd->bhkd", jnp.swapaxes(d_logits, 2, 3), qh)
  d_mask = None if kv_mask is None else np.zeros(kv_mask.shape, jax.dtypes.float0)
  return (_heads_first(d_q).astype(qh.dtype), _heads_first(d_k).astype(kh.dtype),
          _heads_first(d_v).astype(vh.dtype), d_mask)


cpu_attention.defvjp(lambda q, k, v, kv_mask=None: _cpu_attention_forward(q, k, v, kv_mask),
                     _cpu_attention_bwd)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _block(length: int) -> int:
  return next(b for b in _SPLASH_BLOCKS if length % b == 0)


def _splash_local(q, k, v, kv_ids, *, interpret: bool):
  """The kernel on one device's shard. q: (b, Lq, h, D), k/v: (b, Lk, h, D) with Lq, Lk
  multiples of 128 and D a multiple of 128; kv_ids: (b, Lk) int32, 0 = attend."""
  # pylint: disable=g-import-not-at-top  # Pallas TPU is imported only when asked for
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  _, q_len, heads, _ = q.shape
  kv_len = k.shape[1]
  bq, bkv = _block(q_len), _block(kv_len)
  blocks = sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                         block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                         block_q_dq=bq, block_kv_dq=bkv)
  mask = sm.MultiHeadMask([sm.FullMask((q_len, kv_len)) for _ in range(heads)])
  kernel = sk.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                              interpret=interpret)
  to_heads_first = lambda x: x.transpose(0, 2, 1, 3)

  def one_example(q, k, v, ids):
    segments = sk.SegmentIds(q=jnp.zeros((q_len,), jnp.int32), kv=ids)
    return kernel(q, k, v, segment_ids=segments)

  out = jax.vmap(one_example)(to_heads_first(q), to_heads_first(k), to_heads_first(v), kv_ids)
  return to_heads_first(out)


def splash_attention(q, k, v, *, kv_mask=None, interpret: bool | None = None):
  """dot_product_attention through the Pallas TPU splash kernel (shapes as there).

  interpret: run the kernel in Pallas interpret mode; default: when the mesh in scope
  (or, without one, the default backend) is not a TPU.
  """
  batch, q_len, heads, head_dim = q.shape
  kv_len = k.shape[1]
  mesh = jax.sharding.get_abstract_mesh()
  in_mesh = not mesh.empty
  if interpret is None:
    interpret = platform.target_platform() != "tpu"

  # The kernel does not scale the logits: fold 1/sqrt(D) into q (in float32, then back).
  scale = 1.0 / math.sqrt(head_dim)
  q = (q.astype(jnp.float32) * scale).astype(k.dtype)
  d_pad = _round_up(head_dim, _LANES) - head_dim
  q_pad = _round_up(q_len, _LANES) - q_len
  kv_pad = _round_up(kv_len, _LANES) - kv_len
  q = jnp.pad(q, ((0, 0), (0, q_pad), (0, 0), (0, d_pad)))
  k = jnp.pad(k, ((0, 0), (0, kv_pad), (0, 0), (0, d_pad)))
  v = jnp.pad(v, ((0, 0), (0, kv_pad), (0, 0), (0, d_pad)))
  # Segment ids: queries are segment 0 and attend only to keys of segment 0; padded and
  # masked-out keys are segment 1.
  valid = jnp.ones((batch, kv_len), bool) if kv_mask is None else kv_mask.astype(bool)
  valid = jnp.pad(valid, ((0, 0), (0, kv_pad)))
  kv_ids = jnp.where(valid, 0, 1).astype(jnp.int32)

  local = functools.partial(_splash_local, interpret=interpret)
  if not in_mesh:
    out = local(q, k, v, kv_ids)
  else:
    batch_axes = tuple(a for a in _BATCH_AXES if a in mesh.axis_names)
    batch_shards = math.prod(mesh.shape[a] for a in batch_axes)
    batch_spec = batch_axes if batch_axes and batch % batch_shards == 0 else None
    head_axis = _HEAD_AXIS if _HEAD_AXIS in mesh.axis_names else None
    head_spec = head_axis if head_axis and heads % mesh.shape[head_axis] == 0 else None
    qkv_spec = P(batch_spec, None, head_spec, None)
    out = jax.shard_map(local, in_specs=(qkv_spec, qkv_spec, qkv_spec, P(batch_spec, None)),
                        out_specs=qkv_spec, check_vma=False)(q, k, v, kv_ids)
  return out[:, :q_len, :, :head_dim]
