"""MeanFlow (arXiv 2505.13447) in PixNerd's time convention: t = 0 noise, t = 1 data.

The network U(x_t, t, h) predicts the average velocity over [t, t + h] (h >= 0 toward
the data), so that x_{t+h} = x_t + h U; at h = 0 it is the velocity v = dx/dt.

MeanFlow publishes the reverse convention (s = 1 - t: s = 0 data, v_MF = -v). Written
in ours, the MeanFlow identity is U = v + h dU/dt, the total derivative taken along
the flow (dx/dt = v) with the far end t + h held fixed, i.e. with h shrinking as t
grows. `average_velocity_target` is the one place where this conversion lives: the
JVP's tangents are (v, dt = 1, dh = -1) and the target's sign is +, where MeanFlow's
code has (v_MF, ds = 1, dr = 0) and -.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from pixnerd_jax.diffusion import objective
from pixnerd_jax.models import platform

# u_fn(x (B, H, W, C), t (B,), h (B,)) -> average velocity (B, H, W, C); the condition
# is bound in.
AverageVelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def sample_times(rng, batch: int, *, distribution: str = "logit_normal", mean: float = 0.4,
                 std: float = 1.0, equal_fraction: float = 0.75):
  """(t, h), each (batch,) float32, with 0 <= t <= t + h <= 1.

  Two independent draws (logit-normal sigmoid(N(mean, std)), or uniform); t is the
  noisier (smaller), t + h the other. A fraction `equal_fraction` of the batch gets
  h = 0: plain flow matching. MeanFlow's mean -0.4 in its convention is +0.4 here.
  """
  rng_a, rng_b, rng_eq = jax.random.split(rng, 3)
  a = objective.sample_time(rng_a, batch, distribution=distribution, mean=mean, std=std)
  b = objective.sample_time(rng_b, batch, distribution=distribution, mean=mean, std=std)
  t, end = jnp.minimum(a, b), jnp.maximum(a, b)
  equal = jax.random.uniform(rng_eq, (batch,)) < equal_fraction
  return t, jnp.where(equal, 0.0, end - t)


def average_velocity_target(u_fn: AverageVelocityFn, x_t, t, h, v):
  """MeanFlow's regression target for U(x_t, t, h), from one forward-mode pass.

  U_tgt = v + h dU/dt with dU/dt = dU/dx v + dU/dt - dU/dh (the far end t + h fixed):
  a jax.jvp of u_fn at (x_t, t, h) along (v, 1, -1). Stop-gradient: the target is a
  constant of the loss. u_fn is traced under platform.forward_mode_autodiff (the CPU
  custom_vjp layers have no forward-mode rule); fused attention kernels have none either,
  so u_fn should use XLA's attention.
  Args:
    x_t: (B, H, W, C); t, h: (B,); v: (B, H, W, C) the (guided) velocity at (x_t, t).
  Returns:
    (U(x_t, t, h), U_tgt), both (B, H, W, C) float32.
  """
  ones = jnp.ones_like(t)
  with platform.forward_mode_autodiff():
    u, du_dt = jax.jvp(u_fn, (x_t, t, h), (v.astype(x_t.dtype), ones, -ones))
  h_ = h.astype(jnp.float32)[:, None, None, None]
  target = v.astype(jnp.float32) + h_ * du_dt.astype(jnp.float32)
  return u.astype(jnp.float32), jax.lax.stop_gradient(target)


def in_interval(t, interval: tuple[float, float]):
  """(B,) bool: lo <= t <= hi (MeanFlow's guidance window, closed)."""
  return (t >= interval[0]) & (t <= interval[1])


def guided_data_velocity(v, t, *, u_cond, u_uncond, dropped, omega: float, kappa: float,
                         interval: tuple[float, float]):
  """MeanFlow's guidance folded into the training target (from-scratch mode).

  v_g = omega v + kappa U(x, t, 0 | y) + (1 - omega - kappa) U(x, t, 0 | null) inside
  the interval; v outside it and for samples whose condition was dropped.
  Args:
    v: (B, H, W, C) the data velocity x - eps; t: (B,); u_cond, u_uncond: the model's
      velocities (B, H, W, C) (stop-gradient); dropped: (B,) bool.
  """
  guided = v * omega + kappa * u_cond + (1.0 - omega - kappa) * u_uncond
  use = (in_interval(t, interval) & ~dropped)[:, None, None, None]
  return jnp.where(use, guided, v)


def teacher_velocity(v_cond, v_uncond, t, *, guidance: float,
                     interval: tuple[float, float]):
  """A flow-matching teacher's CFG velocity, as its samplers take it (spec 5): u + w (c -
  u) where gmin < t < gmax (strict), the conditional velocity elsewhere. (B, H, W, C)."""
  guided = (t > interval[0]) & (t < interval[1])
  mixed = v_uncond + guidance * (v_cond - v_uncond)
  return jnp.where(guided[:, None, None, None], mixed, v_cond)


def adaptive_loss(u, target, *, power: float = 1.0, eps: float = 0.01):
  """Batch mean of L / sg((L + eps)^power), L the per-sample sum of squared errors.

  Returns:
    (loss, mean raw L): the weighted loss and, for logging, the unweighted one.
  """
  per_sample = jnp.sum(jnp.square(u.astype(jnp.float32) - target), axis=(1, 2, 3))
  weight = jax.lax.stop_gradient(jnp.power(per_sample + eps, power))
  return jnp.mean(per_sample / weight), jnp.mean(per_sample)
