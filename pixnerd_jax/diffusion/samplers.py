"""ODE/SDE samplers for the velocity field, with classifier-free guidance (spec section 5).

t = 0 is noise, t = 1 is data; every sampler integrates dx/dt = v(x, t, y) from the
starting noise to t = 1 on the reference grid (`time_grid`). All are pure functions of
(velocity_fn, noise, labels): jit them (or a caller) once per shape; the step loop is a
`lax.scan`, so the model is traced a fixed number of times whatever the step count.

  euler   x <- step_fn(x, v, t, dt): ODE, or one of the SDE steps of spec 5.1.
  heun    predictor-corrector, last step Euler (spec 5.2), one model call per step
          (the corrector's velocity is reused as the next predictor's) or two (`exact`).
  adamlm  Adams-Bashforth with Lagrange-interpolation coefficients, orders 1-4 (5.3).
  meanflow  few-step sampling of an average-velocity model (diffusion/meanflow.py):
          x <- x + h U(x, t, h) over each grid step h, 1 model call per step. Its
          guidance is trained in, so it runs without CFG (guidance 1); guidance != 1
          mixes average velocities as CFG mixes velocities.

Conditions: `labels` is any per-sample condition, (B,) class ids or (B, T, E) text
features; `null_class` the unconditional one, broadcast to it: the null label (an int) or
the empty prompt's features (1, T, E).

Guidance: a model call at time t is guided iff gmin < t < gmax (strict, float32, as the
reference; the reference's Heun ignores the interval: pass (-inf, inf) to match it). Guided calls run one doubled batch [uncond; cond]; the reference also runs
the doubled batch outside the interval and uses w = 1, whereas here only the conditional
half runs there (`skip_unguided=True`, the same result for half the cost of those calls).
The time grid reproduces the reference bit for bit in float32, because the interval test
sits exactly on grid points (0.1 at 100 steps is not guided).
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# velocity_fn(x (B, H, W, C), t (B,), y) -> velocity (B, H, W, C); y is the condition:
# (B,) class labels, or (B, T, E) text features for the text-to-image model. The
# meanflow sampler also passes h (B,), the interval: velocity_fn(x, t, y, h).
VelocityFn = Callable[..., jax.Array]

SAMPLERS = ("euler", "heun", "adamlm", "meanflow")
MAX_ADAMS_ORDER = 4


# ----------------------------------------------------------------------------- time grid


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
  """The reference Euler/Heun/Adams grid: linspace(0, 1 - last_step, N) + [1.0], shifted.

  Returns:
    (num_steps + 1,) float32, from 0 (noise) to 1 (data).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if last_step is None:
    last_step = 1.0 / num_steps
  if not 0.0 < last_step <= 1.0:
    raise ValueError(f"last_step must be in (0, 1], got {last_step}.")
  ts = np.concatenate([_torch_linspace_f32(0.0, 1.0 - last_step, num_steps),
                       np.ones((1,), np.float32)])
  shift = np.float32(timeshift)
  return (ts / (ts + (np.float32(1) - ts) * shift)).astype(np.float32)


def adams_times(ts: np.ndarray) -> np.ndarray:
  """Times at which AdamLM calls the model: float32 running sums of the grid's steps.

  The reference keeps `t_cur += dt` instead of reading the grid, so these can differ
  from `ts` in the last bit, which decides the strict guidance test on a grid point.
  Args:
    ts: (N + 1,) float32 grid.
  Returns:
    (N,) float32.
  """
  dts = (ts[1:] - ts[:-1]).astype(np.float32)
  out = np.zeros(len(dts), np.float32)
  for i in range(1, len(dts)):
    out[i] = np.float32(out[i - 1] + dts[i - 1])
  return out


# ----------------------------------------------------------------------------- guidance


def is_guided(t, interval: tuple[float, float]):
  """The reference's strict test gmin < t < gmax, in float32 (numpy or jax scalars)."""
  lo, hi = np.float32(interval[0]), np.float32(interval[1])
  return (t > lo) & (t < hi)


def guided_velocity(velocity_fn: VelocityFn, x, t, labels, *, null_class,
                    guidance: float, interval: tuple[float, float],
                    skip_unguided: bool = True):
  """Velocity with classifier-free guidance inside the strict interval gmin < t < gmax.

  Inside it, one doubled batch [uncond; cond] gives u + w (c - u). Outside, with
  `skip_unguided` only the conditional half runs (a lax.cond, so the skipped half costs
  nothing); without it the doubled batch runs with w = 1, as in the reference.
  Args:
    x: (B, H, W, C); t: scalar float32 time of this call; labels: (B, ...) condition;
    null_class: the unconditional condition, broadcastable to labels.
  Returns:
    (B, H, W, C) float32.
  """
  batch = x.shape[0]
  t = jnp.asarray(t, jnp.float32)
  t_batch = jnp.full((batch,), t, jnp.float32)
  if guidance == 1.0:
    return velocity_fn(x, t_batch, labels).astype(jnp.float32)
  guided = is_guided(t, interval)

  def doubled(scale):
    xs = jnp.concatenate([x, x], axis=0)
    uncond = jnp.broadcast_to(jnp.asarray(null_class, labels.dtype), labels.shape)
    ys = jnp.concatenate([uncond, labels], axis=0)
    v = velocity_fn(xs, jnp.concatenate([t_batch, t_batch]), ys).astype(jnp.float32)
    uncond, cond = v[:batch], v[batch:]
    return uncond + scale * (cond - uncond)

  if not skip_unguided:
    return doubled(jnp.where(guided, jnp.float32(guidance), jnp.float32(1.0)))

  def conditional_only(_):
    return velocity_fn(x, t_batch, labels).astype(jnp.float32)

  return jax.lax.cond(guided, lambda _: doubled(guidance), conditional_only, None)


# ----------------------------------------------------------------------------- step functions
# Spec 5.1 with the linear schedule (alpha = t, sigma = 1 - t) and w(t) = sigma(t) = 1 - t.
# The score of x_t is (t v - x) / (1 - t); t < 1 at every step start on the grid.


def score(x, v, t):
  """grad log p_t(x) from the velocity: (t v - x) / (1 - t)."""
  return (t * v - x) / (1.0 - t)


def ode_step(x, v, t, dt, noise=None):
  del t, noise
  return x + v * dt


def sde_mean_step(x, v, t, dt, noise=None):
  """The SDE step without its noise: x + v dt + s w dt."""
  del noise
  w = 1.0 - t
  return x + v * dt + score(x, v, t) * w * dt


def sde_step(x, v, t, dt, noise):
  """x + v dt + s w dt + sqrt(2 w dt) noise: Langevin-corrected, keeps the marginals."""
  w = 1.0 - t
  return x + v * dt + score(x, v, t) * w * dt + jnp.sqrt(2.0 * w * dt) * noise


def sde_preserve_step(x, v, t, dt, noise):
  """x + v dt + s w dt / 2 + sqrt(w dt) noise: half the Langevin strength."""
  w = 1.0 - t
  return x + v * dt + 0.5 * score(x, v, t) * w * dt + jnp.sqrt(w * dt) * noise


STEP_FNS = {"ode": ode_step, "sde_mean": sde_mean_step, "sde": sde_step,
            "sde_preserve": sde_preserve_step}
_NOISY_STEPS = ("sde", "sde_preserve")


def _step_noise(key, step, like):
  """Standard normal like `like` (B, ...) for step `step`.

  key: one key for the batch, or (B,) keys, one per sample, so that a sample's noise
  does not depend on which batch it was drawn in. Raw uint32 keys are accepted too.
  """
  if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  if key.ndim == 0:
    return jax.random.normal(jax.random.fold_in(key, step), like.shape, like.dtype)
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), like.shape[1:],
                                              like.dtype))(key)


# ----------------------------------------------------------------------------- samplers


def euler_sample(velocity_fn: VelocityFn, noise, labels, *, num_steps: int,
                 guidance: float = 1.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
                 timeshift: float = 1.0, last_step: float | None = None,
                 null_class, step_fn: str = "ode", last_step_fn: str = "ode",
                 key=None, skip_unguided: bool = True, return_trajectory: bool = False):
  """Integrates dx/dt = v from t = 0 (noise) to t = 1 with Euler steps.

  Args:
    noise: (B, H, W, C) float32 starting point.
    labels: (B,) int class ids.
    step_fn: "ode" or an SDE step of spec 5.1 ("sde_mean", "sde", "sde_preserve") for
      every step but the last; `last_step_fn` for the last (the reference's default: ODE).
    key: PRNG key (or (B,) keys) for the SDE noise; needed by "sde" and "sde_preserve".
  Returns:
    (B, H, W, C) float32 samples, and with return_trajectory the states before each
    step, (num_steps, B, H, W, C).
  """
  for name in (step_fn, last_step_fn):
    if name not in STEP_FNS:
      raise ValueError(f"Unknown step function {name!r}; choose one of {sorted(STEP_FNS)}.")
  noisy = step_fn in _NOISY_STEPS or last_step_fn in _NOISY_STEPS
  if noisy and key is None:
    raise ValueError(f"step_fn={step_fn!r}/last_step_fn={last_step_fn!r} draw noise: pass key.")
  ts = jnp.asarray(time_grid(num_steps, last_step, timeshift))
  velocity = functools.partial(guided_velocity, velocity_fn, labels=labels,
                               null_class=null_class, guidance=guidance,
                               interval=guidance_interval, skip_unguided=skip_unguided)

  def step(x, inputs):
    i, t_cur, t_next = inputs
    v = velocity(x, t_cur)
    dt = t_next - t_cur
    eps = _step_noise(key, i, x) if noisy else None
    out = STEP_FNS[step_fn](x, v, t_cur, dt, eps)
    if last_step_fn != step_fn:
      out = jnp.where(i < num_steps - 1, out, STEP_FNS[last_step_fn](x, v, t_cur, dt, eps))
    return out, (x if return_trajectory else None)

  x, trajectory = jax.lax.scan(step, noise.astype(jnp.float32),
                               (jnp.arange(num_steps), ts[:-1], ts[1:]))
  return (x, trajectory) if return_trajectory else x


def heun_sample(velocity_fn: VelocityFn, noise, labels, *, num_steps: int,
                guidance: float = 1.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
                timeshift: float = 1.0, last_step: float | None = None, null_class,
                exact: bool = False, skip_unguided: bool = True,
                return_trajectory: bool = False):
  """Heun (trapezoid predictor-corrector) from t = 0 to 1; the last step is Euler.

  Step i: x^ = x + v dt, v^ = v(x^, t_{i+1}), x <- x + (v + v^) / 2 dt. As in the
  reference, v of step i > 0 is the previous step's v^ (taken at the predictor, not at
  the corrected x) unless `exact`, so the cost is num_steps model calls (exact:
  2 num_steps - 1). Unlike the reference, last_step=None works and the guidance interval
  applies (per call, on that call's time).
  Args/Returns: as `euler_sample`.
  """
  ts = time_grid(num_steps, last_step, timeshift)
  velocity = functools.partial(guided_velocity, velocity_fn, labels=labels,
                               null_class=null_class, guidance=guidance,
                               interval=guidance_interval, skip_unguided=skip_unguided)
  dts = jnp.asarray(ts[1:] - ts[:-1])
  ts = jnp.asarray(ts)
  x0 = noise.astype(jnp.float32)

  if exact:
    def step(x, inputs):
      t_cur, t_next, dt = inputs
      v = velocity(x, t_cur)
      v_hat = velocity(x + v * dt, t_next)
      return x + (v + v_hat) / 2 * dt, x

    x, trajectory = jax.lax.scan(step, x0, (ts[:-2], ts[1:-1], dts[:-1]))
    if return_trajectory:
      trajectory = jnp.concatenate([trajectory, x[None]])
    x = x + velocity(x, ts[-2]) * dts[-1]
    return (x, trajectory) if return_trajectory else x

  # One model call per iteration k, at the point p_k and time t_k: p_0 = x_0 and
  # p_k = x_{k-1} + v_{k-1} dt_{k-1} (the predictor). Iteration k first completes step
  # k-1's corrector x_k = x_{k-1} + (v_{k-1} + v_k) / 2 dt_{k-1} (dt_{-1} = 0 makes it a
  # no-op at k = 0), then predicts p_{k+1}. The last predictor is the final Euler step.
  def step(carry, inputs):
    x_prev, v_prev, p = carry
    t_cur, dt, dt_prev = inputs
    v = velocity(p, t_cur)
    x = x_prev + (v_prev + v) / 2 * dt_prev
    return (x, v, x + v * dt), x

  dts_prev = jnp.concatenate([jnp.zeros((1,), jnp.float32), dts[:-1]])
  (_, _, x), trajectory = jax.lax.scan(step, (x0, jnp.zeros_like(x0), x0),
                                       (ts[:-1], dts, dts_prev))
  return (x, trajectory) if return_trajectory else x


def _lagrange_basis_integrals(nodes: np.ndarray, start: float, end: float) -> np.ndarray:
  """Integrals over [start, end] of the Lagrange basis through `nodes` (k,), float64.

  Gauss-Legendre with k points is exact for the degree-(k-1) basis polynomials.
  """
  k = len(nodes)
  gl_x, gl_w = np.polynomial.legendre.leggauss(k)
  half = (end - start) / 2.0
  tq = start + half * (gl_x + 1.0)
  out = np.empty(k)
  for j in range(k):
    others = np.delete(nodes, j)
    basis = np.prod((tq[:, None] - others) / (nodes[j] - others), axis=1)
    out[j] = half * np.sum(gl_w * basis)
  return out


def adams_coefficients(ts: np.ndarray, order: int) -> np.ndarray:
  """AdamLM weights (spec 5.3), right-aligned: row i multiplies v_{i-order+1} .. v_i.

  Row i holds the integrals over [t_i, t_{i+1}] of the Lagrange basis through the last
  order_i = min(order, i + 1) grid times, divided by their sum (so they sum to 1 and the
  update is x + (sum_j c_j v_j) dt); the first order - order_i entries are zero.
  Args:
    ts: (N + 1,) grid.
  Returns:
    (N, order) float32.
  """
  if not 1 <= order <= MAX_ADAMS_ORDER:
    raise ValueError(f"AdamLM order must be in 1..{MAX_ADAMS_ORDER}, got {order}.")
  ts64 = np.asarray(ts, np.float64)
  coeffs = np.zeros((len(ts) - 1, order))
  for i in range(len(ts) - 1):
    k = min(order, i + 1)
    ints = _lagrange_basis_integrals(ts64[i - k + 1:i + 1], ts64[i], ts64[i + 1])
    coeffs[i, order - k:] = ints / ints.sum()
  return coeffs.astype(np.float32)


def adamlm_sample(velocity_fn: VelocityFn, noise, labels, *, num_steps: int,
                  guidance: float = 1.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
                  timeshift: float = 1.0, last_step: float | None = None, null_class,
                  order: int = 2, skip_unguided: bool = True,
                  return_trajectory: bool = False):
  """Adams-Bashforth multistep ("AdamLM", spec 5.3), one model call per step.

  x <- x + (sum_j c_ij v_j) dt_i over the last min(order, i + 1) velocities. The model
  sees the reference's running time (`adams_times`); with the default interval (0, 1)
  the first call (t = 0) is unguided.
  Args/Returns: as `euler_sample`; order in 1..4 (1 = Euler).
  """
  ts = time_grid(num_steps, last_step, timeshift)
  coeffs = jnp.asarray(adams_coefficients(ts, order))
  t_model = jnp.asarray(adams_times(ts))
  dts = jnp.asarray(ts[1:] - ts[:-1])
  velocity = functools.partial(guided_velocity, velocity_fn, labels=labels,
                               null_class=null_class, guidance=guidance,
                               interval=guidance_interval, skip_unguided=skip_unguided)
  x0 = noise.astype(jnp.float32)

  def step(carry, inputs):
    x, history = carry  # history: (order - 1, B, H, W, C), oldest first
    t, dt, c = inputs
    window = jnp.concatenate([history, velocity(x, t)[None]])
    v_bar = jnp.tensordot(c, window, axes=1)
    return (x + v_bar * dt, window[1:]), x

  history = jnp.zeros((order - 1,) + x0.shape, jnp.float32)
  (x, _), trajectory = jax.lax.scan(step, (x0, history), (t_model, dts, coeffs))
  return (x, trajectory) if return_trajectory else x


def meanflow_sample(velocity_fn: VelocityFn, noise, labels, *, num_steps: int,
                    guidance: float = 1.0,
                    guidance_interval: tuple[float, float] = (0.0, 1.0),
                    timeshift: float = 1.0, last_step: float | None = None, null_class,
                    skip_unguided: bool = True, return_trajectory: bool = False):
  """Few-step sampling with an average-velocity model: x_{i+1} = x_i + h_i U(x_i, t_i, h_i)
  on the reference grid (`time_grid`; 1 step: x_1 = x_0 + U(x_0, 0, 1)).

  Args/Returns: as `euler_sample`; velocity_fn takes (x, t, y, h).
  """
  ts = jnp.asarray(time_grid(num_steps, last_step, timeshift))

  def step(x, inputs):
    t_cur, t_next = inputs
    h = t_next - t_cur
    # guided_velocity doubles the batch for CFG; h is the same for every row.
    average = lambda x, t, y: velocity_fn(x, t, y, jnp.full(t.shape, h, jnp.float32))
    u = guided_velocity(average, x, t_cur, labels, null_class=null_class, guidance=guidance,
                        interval=guidance_interval, skip_unguided=skip_unguided)
    return x + h * u, (x if return_trajectory else None)

  x, trajectory = jax.lax.scan(step, noise.astype(jnp.float32), (ts[:-1], ts[1:]))
  return (x, trajectory) if return_trajectory else x


_SAMPLE_FNS = {"euler": euler_sample, "heun": heun_sample, "adamlm": adamlm_sample,
               "meanflow": meanflow_sample}


def sample(velocity_fn: VelocityFn, noise, labels, *, sampler: str = "euler",
           num_steps: int, guidance: float = 1.0,
           guidance_interval: tuple[float, float] = (0.0, 1.0), timeshift: float = 1.0,
           last_step: float | None = None, null_class, order: int = 2,
           exact_heun: bool = False, step_fn: str = "ode", key=None,
           skip_unguided: bool = True, return_trajectory: bool = False):
  """One entry for every sampler.

  Args:
    velocity_fn: (x (B, H, W, C), t (B,), y (B,)) -> velocity (B, H, W, C).
    noise: (B, H, W, C) starting point (t = 0).
    labels: (B,) int class ids or (B, T, E) text features; `null_class` is the
      unconditional label, or the empty prompt's features (1, T, E).
    sampler: "euler" | "heun" | "adamlm" | "meanflow" (an average-velocity model).
    order: AdamLM order (1..4). exact_heun: Heun without velocity reuse.
    step_fn, key: Euler's step ("ode", "sde_mean", "sde", "sde_preserve") and its noise.
  Returns:
    (B, H, W, C) float32 samples at t = 1; with return_trajectory also the states
    before each step, (num_steps, B, H, W, C).
  """
  if sampler not in _SAMPLE_FNS:
    raise ValueError(f"Unknown sampler {sampler!r}; choose one of {SAMPLERS}.")
  if sampler != "euler" and step_fn != "ode":
    raise ValueError(f"step_fn={step_fn!r} is only available with sampler='euler'.")
  common = dict(num_steps=num_steps, guidance=guidance, guidance_interval=guidance_interval,
                timeshift=timeshift, last_step=last_step, null_class=null_class,
                skip_unguided=skip_unguided, return_trajectory=return_trajectory)
  if sampler == "euler":
    return euler_sample(velocity_fn, noise, labels, step_fn=step_fn, key=key, **common)
  if sampler == "heun":
    return heun_sample(velocity_fn, noise, labels, exact=exact_heun, **common)
  if sampler == "meanflow":
    return meanflow_sample(velocity_fn, noise, labels, **common)
  return adamlm_sample(velocity_fn, noise, labels, order=order, **common)


# ----------------------------------------------------------------------------- settings, cost


def settings_from_config(sampling, **overrides) -> dict:
  """Keyword arguments for `sample` from a `config.sampling` block; None overrides ignored.

  Fields: sampler (default "euler"), num_steps, guidance, guidance_interval_min/max,
  timeshift, last_step, order (2), exact_heun (False), step_fn ("ode").
  """
  cfg = dict(sampling)
  cfg.update({k: v for k, v in overrides.items() if v is not None})
  settings = dict(
      sampler=cfg.get("sampler", "euler"),
      num_steps=int(cfg["num_steps"]),
      guidance=float(cfg.get("guidance", 1.0)),
      guidance_interval=(float(cfg.get("guidance_interval_min", 0.0)),
                         float(cfg.get("guidance_interval_max", 1.0))),
      timeshift=float(cfg.get("timeshift", 1.0)),
      last_step=cfg.get("last_step"),
      order=int(cfg.get("order", 2)),
      exact_heun=bool(cfg.get("exact_heun", False)),
      step_fn=cfg.get("step_fn", "ode"))
  if settings["sampler"] not in SAMPLERS:
    raise ValueError(f"sampling.sampler={settings['sampler']!r}: choose one of {SAMPLERS}.")
  if settings["num_steps"] < 1:
    raise ValueError(f"sampling.num_steps={settings['num_steps']}: must be >= 1.")
  if not 1 <= settings["order"] <= MAX_ADAMS_ORDER:
    raise ValueError(f"sampling.order={settings['order']}: must be in 1..{MAX_ADAMS_ORDER}.")
  if settings["step_fn"] not in STEP_FNS:
    raise ValueError(f"sampling.step_fn={settings['step_fn']!r}: choose one of "
                     f"{sorted(STEP_FNS)}.")
  return settings


def call_times(sampler: str, num_steps: int, last_step: float | None = None,
               timeshift: float = 1.0, exact_heun: bool = False) -> np.ndarray:
  """float32 times of the model calls a sampler makes, in order."""
  ts = time_grid(num_steps, last_step, timeshift)
  if sampler in ("euler", "meanflow"):
    return ts[:-1]
  if sampler == "adamlm":
    return adams_times(ts)
  if sampler == "heun":
    if not exact_heun:
      return ts[:-1]
    return np.concatenate([np.stack([ts[:-2], ts[1:-1]], 1).reshape(-1), ts[-2:-1]])
  raise ValueError(f"Unknown sampler {sampler!r}; choose one of {SAMPLERS}.")


def forward_cost(sampler: str = "euler", *, num_steps: int, guidance: float = 1.0,
                 guidance_interval: tuple[float, float] = (0.0, 1.0),
                 timeshift: float = 1.0, last_step: float | None = None,
                 exact_heun: bool = False, **unused) -> dict:
  """Images pushed through the model per sample: with and without skipping.

  Returns:
    {"calls": model calls, "guided_calls": calls inside the interval,
     "images": per-sample images evaluated here (guided calls count 2),
     "images_always_doubled": the reference's count (every call doubled when guidance
     != 1), "saving": 1 - images / images_always_doubled}.
  """
  del unused
  times = call_times(sampler, num_steps, last_step, timeshift, exact_heun)
  guided = int(np.sum(is_guided(times, guidance_interval))) if guidance != 1.0 else 0
  calls = len(times)
  doubled = 2 * calls if guidance != 1.0 else calls
  images = calls + guided
  return dict(calls=calls, guided_calls=guided, images=images,
              images_always_doubled=doubled, saving=1.0 - images / doubled)
