"""Samplers: the reference time grid, guidance interval, and sampler parity."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixnerd_jax.conversion import pixnerd_weights as conversion
from pixnerd_jax.diffusion import samplers
from pixnerd_jax.models import PixNerDiT


def test_time_grid_matches_reference_at_100_steps():
  ts = samplers.time_grid(100)
  assert ts.shape == (101,) and ts.dtype == np.float32
  assert ts[0] == 0 and ts[-1] == 1
  dt = np.diff(ts)
  assert dt.min() >= np.float32(0.00999999) and dt.max() <= np.float32(0.01000005)
  assert ts[10] == np.float32(0.099999994)
  guided = (ts[:-1] > 0.1) & (ts[:-1] < 1.0)
  assert guided.sum() == 89


@pytest.mark.parametrize("steps,last_step,shift", [(100, None, 1.0), (25, None, 3.0),
                                                   (50, 0.04, 1.0), (250, None, 1.0),
                                                   (7, None, 2.0)])
def test_time_grid_is_bitwise_torch(steps, last_step, shift):
  torch = pytest.importorskip("torch", reason="torch (CPU) gives the reference grid")
  ls = 1.0 / steps if last_step is None else last_step
  ref = torch.cat([torch.linspace(0, 1 - ls, steps), torch.tensor([1.0])])
  ref = ref / (ref + (1 - ref) * shift)
  np.testing.assert_array_equal(samplers.time_grid(steps, last_step, shift), ref.numpy())


def test_guidance_runs_only_inside_the_interval():
  calls = []

  def velocity(x, t, y):
    calls.append(x.shape[0])
    # Conditional: 1, unconditional: 0 -> guided result equals the guidance scale.
    return jnp.broadcast_to((y != 10).astype(jnp.float32)[:, None, None, None], x.shape)

  x = jnp.zeros((2, 4, 4, 3))
  labels = jnp.array([1, 2])
  inside = samplers.guided_velocity(velocity, x, jnp.float32(0.5), labels, null_class=10,
                                    guidance=3.0, interval=(0.1, 1.0))
  edge = samplers.guided_velocity(velocity, x, jnp.float32(0.1), labels, null_class=10,
                                  guidance=3.0, interval=(0.1, 1.0))
  np.testing.assert_allclose(inside, 3.0)
  np.testing.assert_allclose(edge, 1.0)  # strict: t == 0.1 is not guided
  assert 4 in calls and 2 in calls


def test_euler_sampler_parity_on_the_c2i_fixture(c2i_fixture):
  with np.load(c2i_fixture) as data:
    fixture = {k: data[k] for k in data.files}
  cfg = json.loads(str(fixture["cfg_json"]))
  sd = {k[3:]: v for k, v in fixture.items() if k.startswith("sd/")}
  model_cfg, params = conversion.convert_state_dict(sd)
  model = PixNerDiT(**model_cfg)
  s = cfg["sampler"]
  out = samplers.euler_sample(
      lambda x, t, y: model.apply({"params": params}, x, t, y),
      fixture["noise"].transpose(0, 2, 3, 1), fixture["labels"].astype(np.int32),
      num_steps=s["num_steps"], guidance=s["guidance"],
      guidance_interval=(s["guidance_interval_min"], s["guidance_interval_max"]),
      timeshift=s["timeshift"], null_class=model.num_classes)
  err = np.abs(np.asarray(out) - fixture["sample_out"].transpose(0, 2, 3, 1)).max()
  assert err <= 1e-4, f"sampler error {err}"


def _official_runs(path):
  with np.load(path) as data:
    fixture = {k: data[k] for k in data.files}
  sd = {k[3:]: v for k, v in fixture.items() if k.startswith("sd/")}
  model_cfg, params = conversion.convert_state_dict(sd)
  model = PixNerDiT(**model_cfg)
  velocity = jax.jit(lambda x, t, y: model.apply({"params": params}, x, t, y))
  runs = conversion.fixture_sampler_runs(fixture, json.loads(str(fixture["cfg_json"])),
                                      model_cfg.get("num_classes"))
  return velocity, runs


def _run_error(velocity, run, **overrides):
  settings = dict(run["settings"], **overrides)
  out = samplers.sample(velocity, run["noise"], run["cond"], null_class=run["null"], **settings)
  return float(np.abs(np.asarray(out) - run["expected"]).max())


def test_official_euler_heun_adamlm_runs_match(samplers_fixture):
  velocity, runs = _official_runs(samplers_fixture)
  names = {run["name"] for run in runs}
  assert names == {"euler_shift_last", "heun", "heun_exact", "adamlm2", "adamlm4_shift"}
  for run in runs:
    err = _run_error(velocity, run)
    assert err <= 1e-4, f"{run['name']}: error {err}"
  # The runs differ from each other by 1e-2 or more, so a near miss would show: e.g. Heun
  # without the reference's always-on guidance, or AdamLM at the wrong order.
  by_name = {run["name"]: run for run in runs}
  assert _run_error(velocity, by_name["heun_exact"],
                    guidance_interval=(0.0, 1.0)) > 1e-3
  assert _run_error(velocity, by_name["adamlm4_shift"], order=3) > 1e-3


def test_official_t2i_adamlm_and_euler_runs_match_with_text_guidance(t2i_fixture):
  velocity, runs = _official_runs(t2i_fixture)
  assert [run["name"] for run in runs] == ["adamlm", "euler"]
  for run in runs:
    assert run["cond"].ndim == 3 and run["null"].shape[0] == 1  # text features, broadcast
    err = _run_error(velocity, run)
    assert err <= 1e-4, f"{run['name']}: error {err}"


def test_euler_integrates_a_constant_velocity_exactly():
  noise = jnp.zeros((1, 2, 2, 1))
  out = samplers.euler_sample(lambda x, t, y: jnp.ones_like(x), noise, jnp.array([0]),
                              num_steps=10, null_class=1)
  np.testing.assert_allclose(out, 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- generic entry


def test_generic_entry_is_the_euler_sampler_that_the_fixture_test_checks():
  velocity = lambda x, t, y: jnp.sin(x) * (y[:, None, None, None] + t[:, None, None, None])
  noise = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  kw = dict(num_steps=10, guidance=3.5, guidance_interval=(0.1, 1.0), null_class=10)
  np.testing.assert_array_equal(
      samplers.sample(velocity, noise, jnp.array([1, 2]), sampler="euler", **kw),
      samplers.euler_sample(velocity, noise, jnp.array([1, 2]), **kw))


@pytest.mark.parametrize("sampler", ["euler", "heun", "adamlm"])
def test_trajectory_starts_at_the_noise(sampler):
  noise = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  out, traj = samplers.sample(lambda x, t, y: -x, noise, jnp.array([0, 1]), sampler=sampler,
                              num_steps=5, null_class=2, return_trajectory=True)
  assert traj.shape == (5, 2, 4, 4, 3) and out.shape == noise.shape
  np.testing.assert_array_equal(traj[0], noise)


def test_unknown_sampler_and_sde_outside_euler_are_rejected():
  kw = dict(num_steps=2, null_class=1)
  x, y = jnp.zeros((1, 2, 2, 1)), jnp.array([0])
  with pytest.raises(ValueError, match="Unknown sampler"):
    samplers.sample(lambda x, t, y: x, x, y, sampler="dpm", **kw)
  with pytest.raises(ValueError, match="only available with sampler='euler'"):
    samplers.sample(lambda x, t, y: x, x, y, sampler="heun", step_fn="sde", **kw)
  with pytest.raises(ValueError, match="pass key"):
    samplers.sample(lambda x, t, y: x, x, y, step_fn="sde", **kw)


# ----------------------------------------------------------------------------- AdamLM


def _numpy_lagrange_integrals(nodes, start, end):
  """Independent check: integrate each Lagrange basis polynomial with numpy.polynomial."""
  out = []
  for j, tj in enumerate(nodes):
    poly = np.polynomial.Polynomial([1.0])
    for m, tm in enumerate(nodes):
      if m != j:
        poly = poly * np.polynomial.Polynomial([-tm, 1.0]) / (tj - tm)
    antiderivative = poly.integ()
    out.append(antiderivative(end) - antiderivative(start))
  return np.array(out)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_adams_coefficients_match_numpy_polynomial_integration(order, shift):
  ts = samplers.time_grid(12, timeshift=shift)
  coeffs = samplers.adams_coefficients(ts, order)
  assert coeffs.shape == (12, order)
  for i in range(12):
    k = min(order, i + 1)
    ints = _numpy_lagrange_integrals(ts[i - k + 1:i + 1].astype(np.float64), float(ts[i]),
                                     float(ts[i + 1]))
    np.testing.assert_allclose(coeffs[i, order - k:], ints / ints.sum(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(coeffs[i, :order - k], 0.0)


def test_adams_coefficients_on_a_uniform_grid_are_adams_bashforth():
  ts = samplers.time_grid(10)
  np.testing.assert_allclose(samplers.adams_coefficients(ts, 2)[5], [-1 / 2, 3 / 2], atol=1e-5)
  np.testing.assert_allclose(samplers.adams_coefficients(ts, 3)[5],
                             np.array([5, -16, 23]) / 12, atol=1e-5)
  np.testing.assert_allclose(samplers.adams_coefficients(ts, 4)[5],
                             np.array([-9, 37, -59, 55]) / 24, atol=1e-5)
  warm_up = samplers.adams_coefficients(ts, 4)[:2]  # orders 1 and 2 while history is short
  np.testing.assert_allclose(warm_up, [[0, 0, 0, 1], [0, 0, -1 / 2, 3 / 2]], atol=1e-5)
  np.testing.assert_allclose(samplers.adams_coefficients(ts, 4).sum(1), 1.0, atol=1e-6)


def test_adams_times_are_float32_running_sums():
  ts = samplers.time_grid(100)
  times = samplers.adams_times(ts)
  assert times[0] == 0 and times.dtype == np.float32
  np.testing.assert_allclose(times, ts[:-1], atol=1e-6)
  expected = np.float32(0)
  for dt in (ts[1:11] - ts[:10]).astype(np.float32):
    expected = np.float32(expected + dt)
  assert times[10] == expected


def _time_velocity(fn):
  """A velocity that depends on t only, broadcast over the image."""
  return lambda x, t, y: jnp.broadcast_to(fn(t)[:, None, None, None], x.shape)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_adamlm_integrates_a_velocity_linear_in_t_after_its_euler_start(order):
  a, b = 0.5, 2.0
  ts = samplers.time_grid(8, timeshift=3.0)  # non-uniform steps
  out = samplers.adamlm_sample(_time_velocity(lambda t: a + b * t), jnp.zeros((1, 2, 2, 1)),
                               jnp.array([0]), num_steps=8, timeshift=3.0, null_class=1,
                               order=order)
  # Exact from step 1 on (degree-1 interpolation reproduces a line); the first step has
  # one point, i.e. Euler, which misses b dt^2 / 2.
  expected = a + b / 2 - b * float(ts[1]) ** 2 / 2
  np.testing.assert_allclose(out, expected, atol=2e-6)


def test_adamlm_order_3_integrates_a_quadratic_velocity_after_its_warm_up():
  ts = samplers.time_grid(6, timeshift=2.0).astype(np.float64)
  out = samplers.adamlm_sample(_time_velocity(lambda t: 3 * t ** 2), jnp.zeros((1, 1, 1, 1)),
                               jnp.array([0]), num_steps=6, timeshift=2.0, null_class=1,
                               order=3)
  t1, t2 = ts[1], ts[2]
  miss_step0 = t1 ** 3                                   # Euler with v(0) = 0
  miss_step1 = (t2 ** 3 - t1 ** 3) - 1.5 * t1 * (t2 ** 2 - t1 ** 2)  # line through 0, t1
  np.testing.assert_allclose(out, 1.0 - miss_step0 - miss_step1, atol=3e-6)


# ----------------------------------------------------------------------------- Heun


@pytest.mark.parametrize("exact", [False, True])
def test_heun_integrates_a_velocity_linear_in_t_except_its_last_euler_step(exact):
  a, b = -1.0, 3.0
  ts = samplers.time_grid(7, timeshift=2.0)
  out = samplers.heun_sample(_time_velocity(lambda t: a + b * t), jnp.zeros((1, 2, 2, 1)),
                             jnp.array([0]), num_steps=7, timeshift=2.0, null_class=1,
                             exact=exact)
  dt_last = float(ts[-1] - ts[-2])
  np.testing.assert_allclose(out, a + b / 2 - b * dt_last ** 2 / 2, atol=2e-6)


@pytest.mark.parametrize("sampler,order,ratio", [("euler", 2, 2.0), ("heun", 2, 4.0),
                                                 ("adamlm", 2, 4.0)])
def test_convergence_order_on_exponential_growth(sampler, order, ratio):
  errors = []
  for n in (16, 32):
    out = samplers.sample(lambda x, t, y: x, jnp.ones((1, 1, 1, 1)), jnp.array([0]),
                          sampler=sampler, num_steps=n, null_class=1, order=order)
    errors.append(abs(float(out.reshape(())) - np.e))
  assert errors[0] / errors[1] == pytest.approx(ratio, rel=0.15)


def test_exact_heun_matches_textbook_heun():
  # dx/dt = -x t: compare with a float64 loop of the same scheme.
  ts = samplers.time_grid(10).astype(np.float64)
  x = 1.0
  for i in range(9):
    dt = ts[i + 1] - ts[i]
    v = -x * ts[i]
    x = x + (v + -(x + v * dt) * ts[i + 1]) / 2 * dt
  x = x + -x * ts[9] * (ts[10] - ts[9])
  out = samplers.heun_sample(lambda x, t, y: -x * t[:, None, None, None],
                             jnp.ones((1, 1, 1, 1)), jnp.array([0]), num_steps=10,
                             null_class=1, exact=True)
  np.testing.assert_allclose(out.reshape(()), x, rtol=1e-6)


# ----------------------------------------------------------------------------- SDE steps


def test_sde_steps_have_the_documented_mean_and_variance():
  k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(k1, (6,))
  v = jax.random.normal(k2, (6,))
  t, dt = jnp.float32(0.3), jnp.float32(0.05)
  w = 1 - 0.3
  s = samplers.score(x, v, t)
  np.testing.assert_allclose(s, (0.3 * v - x) / 0.7, rtol=1e-6)
  mean = samplers.sde_mean_step(x, v, t, dt)
  np.testing.assert_allclose(mean, x + v * dt + s * w * dt, rtol=1e-6)
  noise = jax.random.normal(k3, (40000, 6))
  for fn, drift, var in ((samplers.sde_step, s * w * dt, 2 * w * 0.05),
                         (samplers.sde_preserve_step, 0.5 * s * w * dt, w * 0.05)):
    draws = jax.jit(fn)(x, v, t, dt, noise)  # broadcasts over the 40000 draws
    np.testing.assert_allclose(draws.mean(0), x + v * dt + drift, atol=4 * np.sqrt(var / 4e4))
    np.testing.assert_allclose(draws.var(0), var, rtol=0.05)


def _gaussian_data_velocity(m, sd):
  """Exact flow-matching velocity when the data are N(m, sd^2): E[x1 - eps | x_t]."""
  def velocity(x, t, y):
    t = t[:, None, None, None]
    var = t ** 2 * sd ** 2 + (1 - t) ** 2
    return m + (t * sd ** 2 - (1 - t)) / var * (x - t * m)
  return velocity


@pytest.mark.parametrize("step_fn", ["ode", "sde", "sde_preserve"])
def test_sde_and_ode_samplers_reach_the_data_distribution(step_fn):
  m, sd = 1.5, 0.5
  noise = jax.random.normal(jax.random.key(2), (8000, 1, 1, 1))
  out = samplers.euler_sample(_gaussian_data_velocity(m, sd), noise, jnp.zeros(8000, jnp.int32),
                              num_steps=200, null_class=1, step_fn=step_fn,
                              key=jax.random.key(3))
  assert float(out.mean()) == pytest.approx(m, abs=0.03)
  assert float(out.std()) == pytest.approx(sd, rel=0.06)


def test_sde_noise_with_per_sample_keys_does_not_depend_on_the_batch():
  velocity = _gaussian_data_velocity(0.0, 1.0)
  keys = jax.random.split(jax.random.key(4), 8)
  noise = jax.random.normal(jax.random.key(5), (8, 2, 2, 1))
  labels = jnp.zeros(8, jnp.int32)
  kw = dict(num_steps=6, null_class=1, step_fn="sde")
  full = samplers.euler_sample(velocity, noise, labels, key=keys, **kw)
  half = samplers.euler_sample(velocity, noise[4:], labels[4:], key=keys[4:], **kw)
  np.testing.assert_allclose(full[4:], half, atol=1e-6)
  assert not np.allclose(full[:4], full[4:])


# ----------------------------------------------------------------------------- guidance cost


def _counting_velocity(counts):
  def velocity(x, t, y):
    n = x.shape[0]
    jax.debug.callback(lambda: counts.append(n))
    return jnp.broadcast_to((y != 10).astype(jnp.float32)[:, None, None, None], x.shape)
  return velocity


@pytest.mark.parametrize("sampler,exact", [("euler", False), ("heun", False),
                                           ("heun", True), ("adamlm", False)])
def test_forward_cost_counts_the_calls_actually_made(sampler, exact):
  settings = dict(sampler=sampler, num_steps=100, guidance=3.5, guidance_interval=(0.1, 1.0))
  cost = samplers.forward_cost(exact_heun=exact, **settings)
  for skip, images in ((True, cost["images"]), (False, cost["images_always_doubled"])):
    counts = []
    jax.block_until_ready(samplers.sample(
        _counting_velocity(counts), jnp.zeros((2, 2, 2, 1)), jnp.array([1, 2]),
        null_class=10, exact_heun=exact, skip_unguided=skip, **settings))
    assert sum(counts) == 2 * images  # batch of 2
  assert cost["calls"] == (199 if exact else 100)
  if sampler == "euler":
    assert cost["guided_calls"] == 89 and cost["images"] == 189
    assert cost["saving"] == pytest.approx(11 / 200)


def test_skipping_the_unconditional_half_does_not_change_samples():
  # h: the interval, which the meanflow sampler passes (its model's average velocity).
  velocity = lambda x, t, y, h=0.0: x * (y[:, None, None, None] + 1.0) * (
      t + 0.5 * h)[:, None, None, None]
  noise = jax.random.normal(jax.random.key(6), (3, 2, 2, 1))
  kw = dict(num_steps=20, guidance=2.0, guidance_interval=(0.3, 0.8), null_class=4)
  for sampler in samplers.SAMPLERS:
    a = samplers.sample(velocity, noise, jnp.array([0, 1, 2]), sampler=sampler, **kw)
    b = samplers.sample(velocity, noise, jnp.array([0, 1, 2]), sampler=sampler,
                        skip_unguided=False, **kw)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_adamlm_first_call_is_unguided_with_the_default_interval():
  cost = samplers.forward_cost("adamlm", num_steps=25, guidance=4.0, timeshift=3.0)
  assert cost["calls"] == 25 and cost["guided_calls"] == 24


def test_settings_from_config_defaults_and_overrides():
  cfg = dict(num_steps=50, guidance=2.0, guidance_interval_min=0.1,
             guidance_interval_max=1.0, timeshift=1.0, last_step=None)
  s = samplers.settings_from_config(cfg, sampler="adamlm", order=3, guidance=None)
  assert s["sampler"] == "adamlm" and s["order"] == 3 and s["guidance"] == 2.0
  assert s["guidance_interval"] == (0.1, 1.0) and s["step_fn"] == "ode"
  with pytest.raises(ValueError, match="sampling.order"):
    samplers.settings_from_config(cfg, order=5)


def test_heun_with_velocity_reuse_is_adams_bashforth_2_on_a_uniform_grid():
  # Its predictors p_{k+1} = p_k + (3/2 v_k - 1/2 v_{k-1}) dt: two independent code paths.
  velocity = lambda x, t, y: jnp.sin(3 * x) * (1 + t[:, None, None, None]) - x
  noise = jax.random.normal(jax.random.key(7), (2, 3, 3, 1))
  kw = dict(num_steps=12, null_class=1)
  heun = samplers.heun_sample(velocity, noise, jnp.array([0, 0]), **kw)
  np.testing.assert_allclose(
      heun, samplers.adamlm_sample(velocity, noise, jnp.array([0, 0]), order=2, **kw), atol=2e-6)
  shifted = samplers.heun_sample(velocity, noise, jnp.array([0, 0]), timeshift=3.0, **kw)
  assert not np.allclose(shifted, samplers.adamlm_sample(
      velocity, noise, jnp.array([0, 0]), order=2, timeshift=3.0, **kw), atol=1e-4)


def test_config_sampling_has_every_field_the_readme_documents():
  """README lists sampler, ..., exact_heun, step_fn as config.sampling fields: each is in
  the default config (so --config.sampling.X=... is accepted) and reaches `sample`."""
  from configs import default  # pylint: disable=g-import-not-at-top
  sampling = default.get_config().sampling
  for field in ("sampler", "num_steps", "guidance", "guidance_interval_min",
                "guidance_interval_max", "timeshift", "last_step", "order", "exact_heun",
                "step_fn"):
    assert field in sampling, field
  sampling.step_fn, sampling.exact_heun = "sde", True
  settings = samplers.settings_from_config(sampling)
  assert settings["step_fn"] == "sde" and settings["exact_heun"] is True
