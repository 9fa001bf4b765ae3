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

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pixnerd_jax.diffusion import objective
from pixnerd_jax.diffusion import samplers
from pixnerd_jax.models import platform

# u_fn(x (B, H, W, C), t (B,), h (B,)) -> average velocity (B, H, W, C); the condition
# is bound in.
AverageVelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def grid_steps(num_steps: Sequence[int], *, timeshift: float = 1.0,
               last_step: float | None = None):
  """The steps (t_i, h_i) of the meanflow sampler's grids, and how often to draw each.

  Each grid (num_steps entries) gets the same total weight, split evenly over its steps,
  so 1-step sampling's single interval (0, 1) is drawn as often as all 4 steps of the
  4-step grid together.
  Returns:
    (starts, lengths, probs), each (S,) float32 numpy, S the total number of steps.
  """
  starts, lengths, probs = [], [], []
  for n in num_steps:
    ts = samplers.time_grid(int(n), last_step, timeshift)
    starts.append(ts[:-1])
    lengths.append(ts[1:] - ts[:-1])
    probs.append(np.full(int(n), 1.0 / (int(n) * len(num_steps))))
  return tuple(np.concatenate(a).astype(np.float32) for a in (starts, lengths, probs))


def sample_times(rng, batch: int, *, distribution: str = "logit_normal", mean: float = 0.4,
                 std: float = 1.0, equal_fraction: float = 0.75, grid=None,
                 grid_fraction: float = 0.0, grid_end_fraction: float = 0.0):
  """(t, h), each (batch,) float32, with 0 <= t <= t + h <= 1.

  Two independent draws (logit-normal sigmoid(N(mean, std)), or uniform); t is the
  noisier (smaller), t + h the other. A fraction `equal_fraction` of the batch gets
  h = 0: plain flow matching. MeanFlow's mean -0.4 in its convention is +0.4 here.

  With `grid` (`grid_steps`' output), two more disjoint fractions target the few-step
  sampler: `grid_fraction` gets one of its steps exactly, and `grid_end_fraction` a
  step's far end with t uniform inside the step. The identity U = v + h dU/dt holds
  along t with the far end fixed, so the second fraction trains every interval that
  the target of a sampler step is built from (down from h = 0 at its end).
  """
  rng_a, rng_b, rng_eq, rng_grid, rng_in = jax.random.split(rng, 5)
  a = objective.sample_time(rng_a, batch, distribution=distribution, mean=mean, std=std)
  b = objective.sample_time(rng_b, batch, distribution=distribution, mean=mean, std=std)
  t, end = jnp.minimum(a, b), jnp.maximum(a, b)
  h = end - t
  kind = jax.random.uniform(rng_eq, (batch,))
  if grid is not None and (grid_fraction > 0 or grid_end_fraction > 0):
    starts, lengths, probs = (jnp.asarray(g) for g in grid)
    step = jax.random.choice(rng_grid, starts.shape[0], (batch,), p=probs)
    g_t, g_h = starts[step], lengths[step]
    on_step = (kind >= equal_fraction) & (kind < equal_fraction + grid_fraction)
    t, h = jnp.where(on_step, g_t, t), jnp.where(on_step, g_h, h)
    inside = (kind >= equal_fraction + grid_fraction) & (
        kind < equal_fraction + grid_fraction + grid_end_fraction)
    # t uniform in [start, end): the interval (t, end - t) ends on the grid point.
    t_in = g_t + jax.random.uniform(rng_in, (batch,)) * g_h
    t, h = jnp.where(inside, t_in, t), jnp.where(inside, g_t + g_h - t_in, h)
  return t, jnp.where(kind < equal_fraction, 0.0, h)


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


def integrated_average_velocity(velocity_fn: Callable[[jax.Array, jax.Array], jax.Array],
                                x_t, t, h, *, num_steps: int):
  """The average velocity (x_{t+h} - x_t) / h of an ODE, from num_steps Heun steps of
  h / num_steps each (2 num_steps calls of velocity_fn(x, t) -> dx/dt).

  Distillation's direct target for a sampler step: the teacher's trajectory itself,
  where the JVP target only gets there by bootstrapping the student's own U.
  Args:
    x_t: (B, H, W, C); t, h: (B,), h > 0.
  Returns:
    (B, H, W, C) float32, no gradient.
  """
  x0 = x_t.astype(jnp.float32)
  dt = (h / num_steps).astype(jnp.float32)
  dt_ = dt[:, None, None, None]

  def step(x, k):
    t_k = t + k * dt
    v = velocity_fn(x, t_k).astype(jnp.float32)
    v_next = velocity_fn(x + dt_ * v, t_k + dt).astype(jnp.float32)
    return x + 0.5 * dt_ * (v + v_next), None

  x, _ = jax.lax.scan(step, x0, jnp.arange(num_steps, dtype=jnp.float32))
  return jax.lax.stop_gradient((x - x0) / h.astype(jnp.float32)[:, None, None, None])


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
