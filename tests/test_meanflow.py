"""MeanFlow: the average-velocity model, the objective's target, distillation's teacher
velocity and the few-step sampler, against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixnerd_jax import models
from pixnerd_jax.diffusion import meanflow, samplers
from pixnerd_jax.models import PixNerDiT
from pixnerd_jax.training import checkpoint

# 16 px images: 4 patches; one DiT block and one neural-field block.
TINY = dict(patch_size=8, num_groups=2, hidden_size=32, hidden_size_x=8, num_blocks=2,
            num_cond_blocks=1, num_classes=10)


def exponential_average_velocity(x, t, h):
  """dx/dt = x: x_{t+h} = x e^h, so U(x, t, h) = x (e^h - 1) / h (-> x at h = 0)."""
  h_ = h[:, None, None, None]
  safe = jnp.where(h_ == 0, 1.0, h_)
  return jnp.where(h_ == 0, x, x * jnp.expm1(safe) / safe)


def gaussian_flow(mu, sigma):
  """Data N(mu, sigma^2) per pixel on x_t = t x + (1 - t) eps: the flow is affine,
  x_b = mu b + s_b (x_a - mu a) / s_a with s_t = sqrt(t^2 sigma^2 + (1 - t)^2)."""
  s = lambda t: jnp.sqrt(t ** 2 * sigma ** 2 + (1 - t) ** 2)

  def average_velocity(x, t, h):
    t_, h_ = t[:, None, None, None], h[:, None, None, None]
    b = t_ + h_
    x_b = mu * b + s(b) * (x - mu * t_) / s(t_)
    # h -> 0: the velocity mu + (x - mu t) s'(t) / s(t).
    ds = (t_ * sigma ** 2 - (1 - t_)) / s(t_)
    velocity = mu + (x - mu * t_) * ds / s(t_)
    return jnp.where(h_ == 0, velocity, (x_b - x) / jnp.where(h_ == 0, 1.0, h_))

  return average_velocity


def test_target_is_the_closed_form_average_velocity_of_dx_dt_equals_x():
  """The convention (tangents (v, 1, -1), '+' sign) reproduces the exact U; MeanFlow's
  own convention applied as is (tangent dh = 0, '-' sign) would not."""
  x = jax.random.normal(jax.random.key(0), (4, 2, 2, 1))
  t = jnp.array([0.0, 0.2, 0.5, 0.9])
  h = jnp.array([1.0, 0.5, 0.3, 0.0])
  u, target = meanflow.average_velocity_target(exponential_average_velocity, x, t, h, v=x)
  np.testing.assert_allclose(target, u, rtol=1e-5, atol=1e-6)
  h_ = np.asarray(h)[:, None, None, None]
  growth = np.where(h_ == 0, 1.0, np.expm1(h_) / np.where(h_ == 0, 1.0, h_))
  np.testing.assert_allclose(target, np.asarray(x) * growth, rtol=1e-5)
  _, du = jax.jvp(exponential_average_velocity, (x, t, h), (x, jnp.ones(4), jnp.zeros(4)))
  unconverted = x - h[:, None, None, None] * du
  assert np.max(np.abs(unconverted - u)) > 0.1


def test_target_is_the_closed_form_for_gaussian_data():
  mu, sigma = 0.7, 0.3
  u_fn = gaussian_flow(mu, sigma)
  x = jax.random.normal(jax.random.key(1), (5, 2, 2, 1))
  t = jnp.array([0.0, 0.1, 0.4, 0.6, 0.95])
  h = jnp.array([1.0, 0.6, 0.5, 0.2, 0.05])
  u, target = meanflow.average_velocity_target(u_fn, x, t, h, v=u_fn(x, t, jnp.zeros(5)))
  np.testing.assert_allclose(target, u, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def tiny():
  """One tiny flow-matching model (the teacher) and its average-velocity version, with
  train-like params, shared by the model-level tests (their cost is compilation)."""
  fm = PixNerDiT(**TINY)
  avg = PixNerDiT(average_velocity=True, **TINY)
  fm_params = train_like(models.param_shapes(fm), seed=0)
  from_fm = checkpoint.match_params(models.params_for_model(fm_params, avg),
                                    models.param_shapes(avg), "test")
  return dict(fm=fm, avg=avg, fm_params=fm_params, from_fm=from_fm,
              avg_params=train_like(from_fm, seed=1))


def train_like(shapes, seed: int):
  """Random params at init-like scales (kernels ~ 1/sqrt(fan in), scales ~ 1, biases
  ~ 0.05), drawn on the host: the zero-initialised output layers (the field's, the
  interval embedder's) of a fresh init would make the output constant, and an init
  through Flax compiles the model once more."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if "scale" in name:
      return jnp.asarray(1.0 + 0.05 * noise)
    if leaf.ndim >= 2:
      return jnp.asarray(noise / np.sqrt(np.prod(leaf.shape[:-1])))
    return jnp.asarray(0.05 * noise)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("variant", [dict(remat_policy="blocks", scan_blocks=True),
                                     dict(dtype=jnp.bfloat16)], ids=["remat_scan", "bf16"])
def test_jvp_target_matches_finite_differences(tiny, variant):
  """U_tgt = v + h dU/dt along (x + e v, t + e, h - e), by central differences; the
  JVP runs through remat and the scanned trunk, and in bfloat16 (looser there)."""
  model = tiny["avg"].clone(**variant)
  params = models.params_for_model(tiny["avg_params"], model)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  v = jax.random.normal(jax.random.key(2), x.shape)
  t, h, y = jnp.array([0.3, 0.5]), jnp.array([0.4, 0.2]), jnp.array([1, 4])
  u_fn = lambda x, t, h: model.apply({"params": params}, x, t, y, h).astype(jnp.float32)
  bf16 = variant.get("dtype") == jnp.bfloat16
  e = 5e-2 if bf16 else 1e-2

  @jax.jit
  def both():
    u, target = meanflow.average_velocity_target(u_fn, x, t, h, v)
    fd = (u_fn(x + e * v, t + e, h - e) - u_fn(x - e * v, t - e, h + e)) / (2 * e)
    return u, target, v + h[:, None, None, None] * fd, u_fn(x, t, h)

  u, target, expected, direct = both()
  assert target.dtype == jnp.float32
  scale = float(jnp.abs(expected).max())
  np.testing.assert_allclose(target, expected, atol=(5e-2 if bf16 else 2e-3) * scale)
  np.testing.assert_allclose(u, direct, atol=1e-5)
  assert float(jnp.abs(target - v).max()) > 0.01  # the h dU/dt term is not negligible


def test_flow_matching_params_load_as_the_same_model(tiny):
  """Zero init: the average-velocity model from flow-matching params gives the flow
  model's velocity for every h; the interval path still gets a gradient."""
  fm, avg, fm_params, params = tiny["fm"], tiny["avg"], tiny["fm_params"], tiny["from_fm"]
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  t, y = jnp.array([0.25, 0.8]), jnp.array([3, 10])

  @jax.jit
  def outputs():
    v = fm.apply({"params": fm_params}, x, t, y)
    u = [avg.apply({"params": params}, x, t, y, h) for h in (jnp.zeros(2), jnp.array([.5, .2]))]
    grads = jax.grad(lambda p: jnp.sum(avg.apply({"params": p}, x, t, y, jnp.ones(2)) ** 2))(
        params)
    return v, u, grads

  v, u, grads = outputs()
  for u_h in u:
    np.testing.assert_array_equal(u_h, v)
  assert float(jnp.abs(grads["h_embedder"]["mlp_2"]["kernel"]).max()) > 0
  with pytest.raises(ValueError, match="average-velocity model"):
    jax.eval_shape(lambda: fm.apply({"params": fm_params}, x, t, y, jnp.ones(2)))


def test_grid_fractions_aim_at_the_few_step_samplers_intervals():
  """grid_fraction lands exactly on steps of the 1/2/4-step grids (1 step as often as
  the 4 of 4 steps together); grid_end_fraction ends on a step's far end, inside it."""
  grid = meanflow.grid_steps((1, 2, 4))
  np.testing.assert_allclose(grid[0], [0, 0, 0.5, 0, 0.25, 0.5, 0.75])
  np.testing.assert_allclose(grid[1], [1, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25])
  np.testing.assert_allclose(grid[2].sum(), 1.0, rtol=1e-6)
  n = 6000
  t, h = meanflow.sample_times(jax.random.key(3), n, distribution="uniform",
                               equal_fraction=0.2, grid=grid, grid_fraction=0.3,
                               grid_end_fraction=0.4)
  t, h = np.asarray(t), np.asarray(h)
  steps = set(zip(grid[0].tolist(), grid[1].tolist()))
  on_step = np.array([(a, b) in steps for a, b in zip(t.tolist(), h.tolist())])
  ends_on_grid = np.isin(np.round(t + h, 5), [0.25, 0.5, 0.75, 1.0]) & ~on_step & (h > 0)
  assert abs(np.mean(h == 0) - 0.2) < 0.03
  assert abs(on_step.mean() - 0.3) < 0.03
  assert abs(np.mean(on_step & (t == 0) & (h == 1)) - 0.1) < 0.02
  assert abs(ends_on_grid.mean() - 0.4) < 0.03
  assert np.all((t >= 0) & (h >= 0) & (t + h <= 1 + 1e-6))


def test_integrated_average_velocity_of_dx_dt_equals_x():
  """The teacher-trajectory target converges to the exact U (second order in the step)."""
  x = jax.random.normal(jax.random.key(4), (3, 2, 2, 1))
  t, h = jnp.array([0.0, 0.5, 0.75]), jnp.array([1.0, 0.5, 0.25])
  exact = exponential_average_velocity(x, t, h)
  errors = [float(jnp.max(jnp.abs(meanflow.integrated_average_velocity(
      lambda x, t: x, x, t, h, num_steps=n) - exact))) for n in (4, 8)]
  assert errors[1] < 0.02 and 3.5 < errors[0] / errors[1] < 4.5


def test_teacher_velocity_uses_cfg_inside_its_strict_interval():
  cond, uncond = jnp.full((3, 1, 1, 1), 2.0), jnp.full((3, 1, 1, 1), 1.0)
  t = jnp.array([0.1, 0.5, 1.0])
  v = meanflow.teacher_velocity(cond, uncond, t, guidance=4.0, interval=(0.1, 1.0))
  np.testing.assert_array_equal(v[:, 0, 0, 0], [2.0, 5.0, 2.0])


def test_distillation_target_comes_from_the_guided_teacher(tiny):
  """The loss pass's target at h = 0 is the teacher's CFG velocity (a student fresh from
  the teacher, label dropout off)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.training import meanflow_step  # pylint: disable=g-import-not-at-top
  teacher, teacher_params = tiny["fm"], tiny["fm_params"]
  student, params = tiny["avg"], tiny["from_fm"]
  config = default.get_config()
  config.meanflow.enabled, config.meanflow.equal_fraction = True, 1.0
  config.meanflow.teacher_guidance = 3.0
  config.meanflow.teacher_guidance_interval_min = 0.1
  images = jax.random.uniform(jax.random.key(6), (2, 16, 16, 3), minval=-1, maxval=1)
  labels = jnp.array([0, 3])
  # Rebuild the step's (x_t, t) to compute the expected target independently.
  rng_t, rng_noise = jax.random.split(jax.random.key(7))
  t, h = meanflow.sample_times(rng_t, 2, mean=0.4, equal_fraction=1.0)
  assert float(jnp.abs(h).max()) == 0
  assert bool(jnp.any((t > 0.1) & (t < 1.0)))  # some sample is guided

  @jax.jit
  def losses():
    loss_fn = meanflow_step.make_loss_fn(
        jax.random.key(7), params, images, labels, jnp.zeros(2, bool), 10, model=student,
        config=config, teacher=teacher, teacher_params=teacher_params)
    noise = jax.random.normal(rng_noise, images.shape)
    x_t = t[:, None, None, None] * images + (1 - t[:, None, None, None]) * noise
    apply = lambda y: teacher.apply({"params": teacher_params}, x_t, t, y)
    cond, uncond = apply(labels), apply(jnp.full(2, 10))
    guided = (t > 0.1) & (t < 1.0)
    expected = jnp.where(guided[:, None, None, None], uncond + 3.0 * (cond - uncond), cond)
    u = student.apply({"params": params}, x_t, t, labels, h)
    raw = jnp.mean(jnp.sum((u - expected) ** 2, axis=(1, 2, 3)))
    return loss_fn((params, {}))[1]["meanflow_loss"], raw

  got, raw = losses()
  np.testing.assert_allclose(got, raw, rtol=1e-4)
  assert float(raw) > 0  # CFG moved the target away from the student's own velocity


def test_distillation_ode_target_is_the_teachers_trajectory(tiny):
  """teacher_ode_fraction = 1 on the 1-step grid: every sample regresses one Heun step of
  the guided teacher from noise (t = 0) to data (t = 1), not the JVP target."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.training import meanflow_step  # pylint: disable=g-import-not-at-top
  teacher, teacher_params = tiny["fm"], tiny["fm_params"]
  student, params = tiny["avg"], tiny["avg_params"]
  config = default.get_config()
  mf = config.meanflow
  mf.enabled, mf.teacher_ode_fraction, mf.teacher_ode_steps = True, 1.0, 1
  mf.grid_num_steps = (1,)
  mf.teacher_guidance, mf.teacher_guidance_interval_min = 3.0, -1.0
  mf.teacher_guidance_interval_max = 2.0
  images = jax.random.uniform(jax.random.key(8), (2, 16, 16, 3), minval=-1, maxval=1)
  labels = jnp.array([1, 7])
  _, rng_noise, _ = jax.random.split(jax.random.key(9), 3)

  @jax.jit
  def losses():
    loss_fn = meanflow_step.make_loss_fn(
        jax.random.key(9), params, images, labels, jnp.zeros(2, bool), 10, model=student,
        config=config, teacher=teacher, teacher_params=teacher_params)
    noise = jax.random.normal(rng_noise, images.shape)

    def guided(x, t):
      apply = lambda y: teacher.apply({"params": teacher_params}, x, jnp.full(2, t), y)
      cond, uncond = apply(labels), apply(jnp.full(2, 10))
      return uncond + 3.0 * (cond - uncond)

    v0 = guided(noise, 0.0)
    expected = 0.5 * (v0 + guided(noise + v0, 1.0))
    u = student.apply({"params": params}, noise, jnp.zeros(2), labels, jnp.ones(2))
    raw = jnp.mean(jnp.sum((u - expected) ** 2, axis=(1, 2, 3)))
    return loss_fn((params, {}))[1]["meanflow_loss"], raw

  got, raw = losses()
  np.testing.assert_allclose(got, raw, rtol=1e-4)
  assert float(raw) > 0


def test_digits_meanflow_config_modes():
  """The default distils the quick start's model with its CFG; :scratch has no teacher."""
  from configs import digits, digits_meanflow  # pylint: disable=g-import-not-at-top
  distil, scratch = digits_meanflow.get_config(), digits_meanflow.get_config("scratch")
  assert distil.meanflow.teacher == "workdirs/digits" and not scratch.meanflow.teacher
  assert distil.meanflow.teacher_guidance == digits.get_config().sampling.guidance > 1
  assert distil.sampling.guidance == scratch.sampling.guidance == 1.0
  assert distil.meanflow.teacher_ode_fraction > 0 and scratch.meanflow.equal_fraction == 0.5
  with pytest.raises(ValueError, match="unknown mode"):
    digits_meanflow.get_config("distill")


@pytest.mark.parametrize("num_steps", [1, 2, 4])
def test_meanflow_sampler_with_the_exact_average_velocity_is_exact(num_steps):
  """With the true U of Gaussian data the few-step sampler maps noise z to mu + sigma z."""
  mu, sigma = 0.5, 0.2
  u_fn = gaussian_flow(mu, sigma)
  noise = jax.random.normal(jax.random.key(0), (8, 2, 2, 1))
  calls = []

  def velocity(x, t, y, h):
    calls.append(h)
    return u_fn(x, t, h)

  out = samplers.sample(velocity, noise, jnp.zeros(8, jnp.int32), sampler="meanflow",
                        num_steps=num_steps, null_class=10)
  np.testing.assert_allclose(out, mu + sigma * noise, atol=1e-5)
  assert len(calls) == 1  # traced once by the scan
  settings = samplers.settings_from_config(dict(sampler="meanflow", num_steps=num_steps))
  assert samplers.forward_cost(**settings)["images"] == num_steps
