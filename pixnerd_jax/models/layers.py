"""Building blocks shared by the PixNerd trunk and decoder.

Initialisers reproduce PyTorch's defaults so that a from-scratch run starts from
the same distribution as the reference (spec section 2).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from pixnerd_jax.models import platform

Dtype = Any

# torch.nn.Linear: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int):
  """torch.nn.Linear bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# Kernel gradients with both feature dims at least this wide take the CPU path below;
# for narrow ones (the field's 67 -> 32 embedder) XLA's own dot is faster.
_CPU_KERNEL_GRAD_MIN_FEATURES = 128


@jax.custom_vjp
def _matmul_cpu_backward(x, kernel):
  """x (M, K) @ kernel (K, N), differentiated with a row-major copy of x^T.

  Autodiff gives the kernel gradient as a dot contracting both operands' major dim,
  which XLA:CPU runs through Eigen at ~145 GFLOP/s on 2 cores; copying x^T first (M K
  floats, a fraction of the dot's time) lets it use the YNNPACK GEMM at ~175-200. The
  optimization barrier keeps XLA from folding the transpose back into the dot.
  """
  return jax.lax.dot_general(x, kernel, (((1,), (0,)), ((), ())))


def _matmul_cpu_backward_fwd(x, kernel):
  return _matmul_cpu_backward(x, kernel), (x, kernel)


def _matmul_cpu_backward_bwd(residuals, grad):
  x, kernel = residuals
  d_x = jax.lax.dot_general(grad, kernel, (((1,), (1,)), ((), ())))
  d_kernel = jax.lax.dot_general(jax.lax.optimization_barrier(x.T), grad,
                                 (((1,), (0,)), ((), ())))
  return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


_matmul_cpu_backward.defvjp(_matmul_cpu_backward_fwd, _matmul_cpu_backward_bwd)


def _dense_dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
  """nn.Dense's dot_general; on the CPU backend, wide 2-D kernels get the faster
  backward of _matmul_cpu_backward (same forward, same maths)."""
  wide = min(rhs.shape) >= _CPU_KERNEL_GRAD_MIN_FEATURES
  if lhs.ndim == 2 and precision is None and not kwargs and wide and (
      platform.custom_cpu_backward()):
    return _matmul_cpu_backward(lhs, rhs)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, **kwargs)


class Dense(nn.Dense):
  """nn.Dense (same params) applied to the inputs flattened to (rows, features).

  The maths is nn.Dense's. Flattening matters for speed: with (B, L, D) inputs, XLA:CPU
  fuses the elementwise backward of what follows into a 3-D transposed copy for the
  kernel-gradient dot, which runs an order of magnitude slower than the 2-D transpose it
  emits for flat inputs (S/8 train step 1.4 -> 1.0 s on 2 cores). On the CPU backend the
  kernel gradient is also reformulated (_matmul_cpu_backward; S/8 step ~-3.5%).
  """
  dot_general: Any = _dense_dot_general

  def __call__(self, inputs):
    lead = inputs.shape[:-1]
    out = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
    return out.reshape(*lead, out.shape[-1])


def torch_dense(features: int, fan_in: int, *, axes: tuple[str, str], use_bias: bool = True,
                kernel_init=None, bias_init=None, **kwargs) -> nn.Dense:
  """nn.Dense initialised like torch.nn.Linear(fan_in, features) unless overridden.

  `axes` are the logical (in, out) axis names of the kernel; runtime/mesh.py maps them to
  mesh axes.
  """
  kernel_init = kernel_init or torch_linear_kernel_init
  bias_init = bias_init or torch_linear_bias_init(fan_in)
  return Dense(
      features,
      use_bias=use_bias,
      kernel_init=nn.with_logical_partitioning(kernel_init, axes),
      bias_init=nn.with_logical_partitioning(bias_init, axes[1:]),
      **kwargs)


class RMSNorm(nn.Module):
  """RMSNorm over the last axis, statistics in float32, eps 1e-6, weight init 1.

  Attributes:
    cast_before_weight: the c2i reference casts the normalised value back to the input
      dtype before applying the weight; the t2i one applies the weight first. The two
      agree exactly in float32 and differ by a rounding in bfloat16.
  """
  eps: float = 1e-6
  cast_before_weight: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                        (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    if self.cast_before_weight:
      normed = normed.astype(x.dtype).astype(jnp.float32)
      return (normed * weight.astype(jnp.float32)).astype(self.dtype)
    return (normed * weight.astype(jnp.float32)).astype(x.dtype).astype(self.dtype)


def timestep_frequencies(t, dim: int = 256, max_period: float = 10.0):
  """Sinusoidal features of raw t in [0, 1], cos first then sin.

  Args:
    t: (B,) float.
  Returns:
    (B, dim) float32.
  """
  half = dim // 2
  freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


class TimestepEmbedder(nn.Module):
  """t (B,) -> (B, hidden_size): sinusoidal features then a 2-layer SiLU MLP.

  zero_output: the last layer starts at zero (kernel and bias), so the embedder adds
  nothing until trained (MeanFlow's interval embedder on a flow-matching model).
  """
  hidden_size: int
  frequency_size: int = 256
  max_period: float = 10.0
  zero_output: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t):
    emb = timestep_frequencies(t, self.frequency_size, self.max_period)
    normal = nn.initializers.normal(0.02)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=normal)
    h = torch_dense(self.hidden_size, self.frequency_size, axes=("freq", "embed"), name="mlp_0",
                    **kw)(emb)
    if self.zero_output:
      kw.update(kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)
    return torch_dense(self.hidden_size, self.hidden_size, axes=("embed_in", "embed"),
                       name="mlp_2", **kw)(nn.silu(h))


class LabelEmbedder(nn.Module):
  """y (B,) int -> (B, hidden_size). Row `num_classes` is the null class."""
  num_classes: int
  hidden_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, y):
    init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed"))
    table = self.param("embedding_table", init,
                       (self.num_classes + 1, self.hidden_size), self.param_dtype)
    return jnp.take(table, y, axis=0).astype(self.dtype)


class SwiGLU(nn.Module):
  """w2(silu(w1 x) * w3 x); no biases. hidden_size is the already-reduced width."""
  hidden_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    dim = x.shape[-1]
    gate = torch_dense(self.hidden_size, dim, axes=("embed", "mlp"), name="w1", **kw)(x)
    value = torch_dense(self.hidden_size, dim, axes=("embed", "mlp"), name="w3", **kw)(x)
    return torch_dense(dim, self.hidden_size, axes=("mlp", "embed"), name="w2",
                       **kw)(nn.silu(gate) * value)


class FusedSwiGLU(nn.Module):
  """The t2i reference's SwiGLU: w3(silu(a) * b) with [a; b] = w12 x; no biases.

  hidden_size is used as given (4 D in the t2i model, no 2/3 rule).
  """
  hidden_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    dim = x.shape[-1]
    gate, value = jnp.split(
        torch_dense(2 * self.hidden_size, dim, axes=("embed", "mlp"), name="w12", **kw)(x),
        2, axis=-1)
    return torch_dense(dim, self.hidden_size, axes=("mlp", "embed"), name="w3",
                       **kw)(nn.silu(gate) * value)


def swiglu_hidden_size(hidden_size: int, mlp_ratio: float = 4.0) -> int:
  """The reference's c2i 2/3 rule: int(2 * int(D * ratio) / 3)."""
  return int(2 * int(hidden_size * mlp_ratio) / 3)
