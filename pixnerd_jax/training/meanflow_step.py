"""The MeanFlow loss of one train step (config.meanflow): from data, or distilled from a
frozen flow-matching teacher.

The target pass (forward-mode, no gradient) and the loss pass (reverse-mode) are two
separate model calls. That costs one more forward than differentiating through the
jax.jvp, but the target pass then stores no activations (the step's memory is flow
matching's), and the loss pass may use any attention kernel: fused kernels (cuDNN,
splash) and the CPU backward passes are custom_vjp functions without a forward-mode
rule, so the target pass runs XLA's attention and plain matmuls instead.
"""

import jax
import jax.numpy as jnp
import ml_collections

from pixnerd_jax.diffusion import meanflow
from pixnerd_jax.diffusion import objective
from pixnerd_jax.models import PixNerDiT


def _doubled(apply_fn, x_t, t, condition, null_condition):
  """(conditional, unconditional) outputs of one doubled batch [cond; uncond]."""
  null = jnp.broadcast_to(jnp.asarray(null_condition, condition.dtype), condition.shape)
  out = apply_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]),
                 jnp.concatenate([condition, null])).astype(jnp.float32)
  return out[:x_t.shape[0]], out[x_t.shape[0]:]


def guided_velocity(params, x_t, t, v_data, condition, dropped, null_condition, *,
                    model: PixNerDiT, mf: ml_collections.ConfigDict, teacher: PixNerDiT | None,
                    teacher_params):
  """The instantaneous velocity v_g the average velocity is trained to integrate.

  Distillation: the teacher's CFG velocity (teacher_guidance on its strict interval; a
  dropped condition gives the teacher's unconditional velocity). From data: x - eps, with
  MeanFlow's omega/kappa guidance on the model's own h = 0 velocities.
  Returns:
    (B, H, W, C) float32, no gradient.
  """
  if teacher is not None:
    apply = lambda x, t, y: teacher.apply({"params": teacher_params}, x, t, y)
    cond, uncond = _doubled(apply, x_t, t, condition, null_condition)
    v_g = meanflow.teacher_velocity(
        cond, uncond, t, guidance=mf.teacher_guidance,
        interval=(mf.teacher_guidance_interval_min, mf.teacher_guidance_interval_max))
    return jax.lax.stop_gradient(v_g)
  if mf.omega == 1.0 and mf.kappa == 0.0:
    return v_data
  apply = lambda x, t, y: model.apply({"params": params}, x, t, y, jnp.zeros_like(t))
  cond, uncond = _doubled(apply, x_t, t, condition, null_condition)
  v_g = meanflow.guided_data_velocity(
      v_data, t, u_cond=cond, u_uncond=uncond, dropped=dropped, omega=mf.omega,
      kappa=mf.kappa, interval=(mf.guidance_interval_min, mf.guidance_interval_max))
  return jax.lax.stop_gradient(v_g)


def _teacher_guided_fn(teacher: PixNerDiT, teacher_params, condition, null_condition,
                       mf: ml_collections.ConfigDict):
  """(x, t) -> the teacher's CFG velocity for these conditions, (B, H, W, C) float32."""
  apply = lambda x, t, y: teacher.apply({"params": teacher_params}, x, t, y)

  def velocity(x, t):
    cond, uncond = _doubled(apply, x, t, condition, null_condition)
    return meanflow.teacher_velocity(
        cond, uncond, t, guidance=mf.teacher_guidance,
        interval=(mf.teacher_guidance_interval_min, mf.teacher_guidance_interval_max))

  return velocity


def make_loss_fn(rng, params, images, condition, dropped, null_condition, *,
                 model: PixNerDiT, config: ml_collections.ConfigDict,
                 teacher: PixNerDiT | None = None, teacher_params=None):
  """The step's loss as a function of the trainable (params, aux_params).

  Distillation with meanflow.teacher_ode_fraction > 0: that leading part of the batch
  sits exactly on steps of the sampler grids (meanflow.grid_num_steps) and regresses the
  teacher's own trajectory over the step (meanflow.teacher_ode_steps Heun steps); the
  rest regresses MeanFlow's JVP target.
  Args:
    params: the current params (for the target, which is a constant of the loss).
    images: (B, H, W, C) in [-1, 1]; condition: (B,) labels or (B, T, E) text features,
      after dropout; dropped: (B,) bool; null_condition: the null label or the empty
      prompt's features (1, T, E).
  Returns:
    loss_fn(trainable) -> (loss, {'meanflow_loss': unweighted per-sample squared error}).
  """
  mf = config.meanflow
  rng_t, rng_noise, rng_ode = jax.random.split(rng, 3)
  batch = images.shape[0]
  grid = None
  if mf.get("grid_fraction", 0.0) or mf.get("grid_end_fraction", 0.0) or (
      teacher is not None and mf.get("teacher_ode_fraction", 0.0)):
    grid = meanflow.grid_steps(mf.grid_num_steps, timeshift=config.sampling.timeshift,
                               last_step=config.sampling.last_step)
  t, h = meanflow.sample_times(rng_t, batch, distribution=mf.time_distribution,
                               mean=mf.time_mean, std=mf.time_std,
                               equal_fraction=mf.equal_fraction, grid=grid,
                               grid_fraction=mf.get("grid_fraction", 0.0),
                               grid_end_fraction=mf.get("grid_end_fraction", 0.0))
  n_ode = 0
  if teacher is not None and mf.get("teacher_ode_fraction", 0.0):
    n_ode = min(batch, max(1, int(round(batch * mf.teacher_ode_fraction))))
    starts, lengths, probs = (jnp.asarray(g) for g in grid)
    pick = jax.random.choice(rng_ode, starts.shape[0], (n_ode,), p=probs)
    t, h = t.at[:n_ode].set(starts[pick]), h.at[:n_ode].set(lengths[pick])
  noise = jax.random.normal(rng_noise, images.shape, jnp.float32)
  x_t, v_data = objective.interpolate(images.astype(jnp.float32), noise, t)

  targets = []
  if n_ode:
    velocity = _teacher_guided_fn(teacher, teacher_params, condition[:n_ode],
                                  null_condition, mf)
    targets.append(meanflow.integrated_average_velocity(
        velocity, x_t[:n_ode], t[:n_ode], h[:n_ode], num_steps=mf.teacher_ode_steps))
  if n_ode < batch:
    rest = slice(n_ode, None)
    v_g = guided_velocity(params, x_t[rest], t[rest], v_data[rest], condition[rest],
                          dropped[rest], null_condition, model=model, mf=mf,
                          teacher=teacher, teacher_params=teacher_params)
    target_model = model.clone(attention_implementation=None)

    def u_fn(x, t, h):
      return target_model.apply({"params": params}, x, t, condition[rest], h)

    targets.append(meanflow.average_velocity_target(u_fn, x_t[rest], t[rest], h[rest],
                                                    v_g)[1])
  target = jnp.concatenate(targets) if len(targets) > 1 else targets[0]

  def loss_fn(trainable):
    u = model.apply({"params": trainable[0]}, x_t, t, condition, h)
    loss, raw = meanflow.adaptive_loss(u, target, power=mf.loss_power, eps=mf.loss_eps)
    return loss, {"meanflow_loss": raw}

  return loss_fn
