"""MeanFlow's price and payoff: sampling images/s and train-step time against flow matching.

  python benchmarks/meanflow.py                      # S/8 at 64 px, batch 16, this machine

Sampling: the 1-step meanflow sampler (average-velocity model, no CFG) against the
teacher's sampler, Euler 100 steps with CFG 3.5 on (0.1, 1), on the same model size.
Training: the trainer's step (train.build_train_program) as flow matching, as MeanFlow
from data (the JVP target pass), and as MeanFlow distillation (plus the teacher's doubled
CFG forward); times relative to flow matching. Random weights: the costs do not depend
on them.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top

from benchmarks import common
from configs import default as default_config
from configs import models as presets
from pixnerd_jax.diffusion import samplers
from pixnerd_jax.models import build_model, init_params
from pixnerd_jax.runtime import mesh as mesh_lib
from pixnerd_jax.training import train


def sampling_rates(args) -> dict[str, float]:
  """images/s of the two samplers, medians of args.repeats runs after a compile."""
  rates = {}
  cases = {"meanflow 1 step": (True, dict(sampler="meanflow", num_steps=1)),
           f"euler {args.euler_steps} steps CFG 3.5": (
               False, dict(sampler="euler", num_steps=args.euler_steps, guidance=3.5,
                           guidance_interval=(0.1, 1.0)))}
  for name, (average, settings) in cases.items():
    model = build_model(presets.get(args.preset, num_classes=args.num_classes, dtype=args.dtype,
                                    average_velocity=average))
    params = jax.jit(init_params, static_argnums=0)(model, jax.random.key(0))
    noise = jax.random.normal(jax.random.key(1), (args.batch, args.resolution,
                                                  args.resolution, model.in_channels))
    labels = jax.random.randint(jax.random.key(2), (args.batch,), 0, args.num_classes)
    fn = jax.jit(lambda p, x, y, model=model, settings=settings: samplers.sample(
        lambda x, t, y, h=None: model.apply({"params": p}, x, t, y, h), x, y,
        null_class=model.num_classes, **settings))
    compile_s, run_s = common.compile_and_time(fn, (params, noise, labels), args.repeats)
    rates[name] = args.batch / run_s
    print(f"{name:>28}: compile {compile_s:6.1f} s | run {run_s:8.3f} s | "
          f"{rates[name]:9.2f} img/s", flush=True)
  return rates


def train_step_seconds(args) -> dict[str, float]:
  """Median seconds of the trainer's step per objective."""
  out = {}
  for name in ("flow matching", "meanflow", "meanflow distillation"):
    config = default_config.get_config()
    config.model = presets.get(args.preset, num_classes=args.num_classes, dtype=args.dtype,
                               average_velocity=name != "flow matching")
    config.batch_size = args.batch
    config.data.resolution = args.resolution
    config.meanflow.enabled = name != "flow matching"
    config.meanflow.teacher = "benchmark" if name == "meanflow distillation" else ""
    config.meanflow.teacher_guidance = 3.5
    program = train.build_train_program(config, mesh_lib.create_mesh(config.mesh))
    frozen = {}
    if program.teacher is not None:
      frozen["teacher"] = jax.jit(init_params, static_argnums=0)(program.teacher,
                                                                   jax.random.key(3))
    state = jax.jit(program.make_state, out_shardings=program.state_sharding)()
    shape = (args.batch, args.resolution, args.resolution, 3)
    batch = {"image": jax.random.uniform(jax.random.key(0), shape, minval=-1.0, maxval=1.0),
             "label": jax.random.randint(jax.random.key(1), (args.batch,), 0,
                                         args.num_classes)}
    start = time.perf_counter()
    state, _ = program.step(state, batch, frozen)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      state, metrics = program.step(state, batch, frozen)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    out[name] = sorted(times)[len(times) // 2]
    print(f"{name:>28}: compile+first {compile_s:6.1f} s | step {out[name]:8.3f} s | "
          f"{out[name] / out['flow matching']:5.2f}x flow matching", flush=True)
  return out


def main():
  parser = common.model_parser(__doc__, repeats=3)
  parser.add_argument("--euler_steps", type=int, default=100)
  parser.add_argument("--skip", choices=["sampling", "training"], default=None)
  args = parser.parse_args()
  common.check_model_args(parser, args)
  print(f"preset {args.preset}, {args.resolution}px, batch {args.batch}, {args.dtype}, "
        f"{jax.devices()[0].device_kind} x{jax.device_count()}", flush=True)
  if args.skip != "sampling":
    rates = sampling_rates(args)
    fast, slow = rates.values()
    print(f"1-step meanflow is {fast / slow:.1f}x the images/s of Euler {args.euler_steps} "
          "with CFG", flush=True)
  if args.skip != "training":
    train_step_seconds(args)


if __name__ == "__main__":
  main()
