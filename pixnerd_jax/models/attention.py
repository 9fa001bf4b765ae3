"""Multi-head attention kernels: XLA or cuDNN (jax.nn.dot_product_attention), or TPU splash.

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
from jax.sharding import PartitionSpec as P

IMPLEMENTATIONS = (None, "xla", "cudnn", "splash")
_LANES = 128                        # splash tiles head_dim and sequences by this
_SPLASH_BLOCKS = (512, 256, 128)    # largest that divides the padded sequence is used
_BATCH_AXES = ("data", "fsdp")      # as sharding.BATCH_AXES (no import: models stay leaf)
_HEAD_AXIS = "tensor"


def dot_product_attention(q, k, v, *, implementation: str | None = None, kv_mask=None):
  """Scaled dot-product attention.

  Args:
    q: (B, Lq, H, D) queries; k, v: (B, Lk, H, D).
    implementation: None or "xla" (XLA), "cudnn" (GPU), "splash" (TPU Pallas kernel).
    kv_mask: optional (B, Lk) bool, True where a key may be attended to.
  Returns:
    (B, Lq, H, D) in q's dtype.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"Unknown attention implementation {implementation!r}; use one of "
                     f"{IMPLEMENTATIONS}.")
  if implementation == "splash":
    return splash_attention(q, k, v, kv_mask=kv_mask)
  mask = None if kv_mask is None else kv_mask[:, None, None, :]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


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
    device = getattr(mesh, "abstract_device", None) if in_mesh else None
    platform = device.platform if device is not None else jax.default_backend()
    interpret = platform != "tpu"

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
