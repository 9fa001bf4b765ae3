"""ODE samplers for the velocity field, with classifier-free guidance (spec section 5).

The time grid reproduces the reference bit for bit in float32, because the guidance
interval test is strict and sits exactly on grid points (0.1 at 100 steps).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# apply_fn(x (B, H, W, C), t (B,), y (B,)) -> velocity (B, H, W, C)
VelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
  """float32 linspace computed the way torch's CPU kernel does (float32 step, halves)."""
  if steps == 1:
    return np.array([start], np.float32)
  end32 = float(np.float32(end))
  step = float(np.float32((np.float32(end) - np.float32(start)) / np.float32(steps - 1)))
  i = np.arange(steps, dtype=np.float64)
  values = np.where(i < steps // 2, start + step * i, end32 - step * (steps - 1 - i))
  return values.astype(np.float32)


def time_grid(num_steps: int, last_step: float | None = None,
              timeshift: float = 1.0) -> np.ndarray:
  """The reference Euler/Adams grid: linspace(0, 1 - last_step, N) + [1.0], then shifted.

  Returns:
    (num_steps + 1,) float32, from 0 (noise) to 1 (data).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if last_step is None:
    last_step = 1.0 / num_steps
  ts = np.concatenate([_torch_linspace_f32(0.0, 1.0 - last_step, num_steps),
                       np.ones((1,), np.float32)])
  shift = np.float32(timeshift)
  return (ts / (ts + (np.float32(1) - ts) * shift)).astype(np.float32)


def guided_velocity(velocity_fn: VelocityFn, x, t, labels, *, null_class: int,
                    guidance: float, interval: tuple[float, float]):
  """Velocity with classifier-free guidance inside the strict interval gmin < t < gmax.

  Inside it, one doubled batch [uncond; cond] gives u + w (c - u); outside, only the
  conditional half runs (the reference runs both and uses w = 1: same result).
  Args:
    x: (B, H, W, C); t: scalar float32 (the current grid time); labels: (B,).
  """
  batch = x.shape[0]
  t_batch = jnp.full((batch,), t, jnp.float32)
  if guidance == 1.0:
    return velocity_fn(x, t_batch, labels)
  guided = (t > interval[0]) & (t < interval[1])

  def with_guidance(_):
    doubled = jnp.concatenate([x, x], axis=0)
    ys = jnp.concatenate([jnp.full_like(labels, null_class), labels], axis=0)
    v = velocity_fn(doubled, jnp.concatenate([t_batch, t_batch]), ys).astype(jnp.float32)
    uncond, cond = v[:batch], v[batch:]
    return uncond + guidance * (cond - uncond)

  def without_guidance(_):
    return velocity_fn(x, t_batch, labels).astype(jnp.float32)

  return jax.lax.cond(guided, with_guidance, without_guidance, None)


def euler_sample(velocity_fn: VelocityFn, noise, labels, *, num_steps: int,
                 guidance: float = 1.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
                 timeshift: float = 1.0, last_step: float | None = None,
                 null_class: int, return_trajectory: bool = False):
  """Integrates dx/dt = v from t = 0 (noise) to t = 1 with Euler steps.

  Args:
    noise: (B, H, W, C) float32 starting point.
    labels: (B,) int class ids.
  Returns:
    (B, H, W, C) float32 samples, and with return_trajectory the states before each
    step, (num_steps, B, H, W, C).
  """
  ts = jnp.asarray(time_grid(num_steps, last_step, timeshift))

  def step(x, times):
    t_cur, t_next = times
    v = guided_velocity(velocity_fn, x, t_cur, labels, null_class=null_class,
                        guidance=guidance, interval=guidance_interval)
    return x + v * (t_next - t_cur), (x if return_trajectory else None)

  x, trajectory = jax.lax.scan(step, noise.astype(jnp.float32), (ts[:-1], ts[1:]))
  return (x, trajectory) if return_trajectory else x
