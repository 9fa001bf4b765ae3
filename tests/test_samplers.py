"""Samplers: the reference time grid, guidance interval, and sampler parity."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from pixnerd_jax import convert
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


def test_euler_sampler_parity_on_reference_fixtures(reference_fixtures):
  for path in reference_fixtures:
    with np.load(path) as data:
      fixture = {k: data[k] for k in data.files}
    cfg = json.loads(str(fixture["cfg_json"]))
    sd = {k[3:]: v for k, v in fixture.items() if k.startswith("sd/")}
    model_cfg, params = convert.convert_state_dict(sd)
    model = PixNerDiT(**model_cfg)
    s = cfg["sampler"]
    out = samplers.euler_sample(
        lambda x, t, y: model.apply({"params": params}, x, t, y),
        fixture["noise"].transpose(0, 2, 3, 1), fixture["labels"].astype(np.int32),
        num_steps=s["num_steps"], guidance=s["guidance"],
        guidance_interval=(s["guidance_interval_min"], s["guidance_interval_max"]),
        timeshift=s["timeshift"], null_class=model.num_classes)
    err = np.abs(np.asarray(out) - fixture["sample_out"].transpose(0, 2, 3, 1)).max()
    assert err <= 1e-4, f"{path.name}: sampler error {err}"


def test_euler_integrates_a_constant_velocity_exactly():
  noise = jnp.zeros((1, 2, 2, 1))
  out = samplers.euler_sample(lambda x, t, y: jnp.ones_like(x), noise, jnp.array([0]),
                              num_steps=10, null_class=1)
  np.testing.assert_allclose(out, 1.0, atol=1e-6)
