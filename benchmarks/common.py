"""Helpers shared by the benchmark scripts: model flags and timing."""

import argparse
import statistics
import time

import jax


def model_parser(description: str, repeats: int = 10) -> argparse.ArgumentParser:
  """A parser with the model/input flags every benchmark takes."""
  parser = argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="S/8")
  parser.add_argument("--resolution", type=int, default=64)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--repeats", type=int, default=repeats,
                      help="timed runs after compile (median)")
  return parser


def check_model_args(parser: argparse.ArgumentParser, args) -> dict:
  """The preset's model fields; usage errors (exit 2) for an unknown --preset or a
  resolution its patch size does not divide."""
  # pylint: disable=g-import-not-at-top
  from configs import models as presets
  try:
    fields = dict(presets.get(args.preset))
  except ValueError as e:
    parser.error(f"--preset: {e}")
  if args.resolution % fields["patch_size"]:
    parser.error(f"--resolution {args.resolution} is not divisible by the patch size "
                 f"{fields['patch_size']} of {args.preset}.")
  return fields


def median_seconds(fn, *args, repeats: int) -> float:
  """Median wall time of fn(*args), waiting for the result each time."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def compile_and_time(jitted, args, repeats: int) -> tuple[float, float]:
  """(compile seconds, median step seconds) of a jitted function, after one warm-up."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))  # warm-up
  return compile_s, median_seconds(compiled, *args, repeats=repeats)


def c2i_train_program(args):
  """(program, images, labels): the trainer's class-conditional step (train.TrainProgram)
  at args.preset / resolution / batch / num_classes / dtype, and one random batch."""
  # pylint: disable=g-import-not-at-top  # only the JAX side of a benchmark needs these
  import jax.numpy as jnp
  from configs import default as default_config
  from configs import models as presets
  from pixnerd_jax.runtime import mesh as sharding
  from pixnerd_jax.training import train
  config = default_config.get_config()
  config.model = presets.get(args.preset, num_classes=args.num_classes, dtype=args.dtype)
  config.batch_size = args.batch
  config.data.resolution = args.resolution
  program = train.build_train_program(config, sharding.create_mesh(config.mesh))
  shape = (args.batch, args.resolution, args.resolution, config.model.in_channels)
  images = jax.random.uniform(jax.random.key(0), shape, jnp.float32, -1.0, 1.0)
  labels = jax.random.randint(jax.random.key(1), (args.batch,), 0, args.num_classes)
  return program, images, labels


def cfg_euler_step(model, t: float = 0.5, dt: float = 0.01, guidance: float = 3.5):
  """Jitted (params, x, labels) -> x + v dt: one Euler step with classifier-free guidance
  on the doubled [uncond; cond] batch (t inside the interval (0.1, 1), so both halves run)."""
  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  from pixnerd_jax.diffusion import samplers

  @jax.jit
  def step(params, x, labels):
    velocity_fn = lambda x, t, y, h=None: model.apply({"params": params}, x, t, y, h)
    v = samplers.guided_velocity(velocity_fn, x, jnp.float32(t), labels,
                                 null_class=model.num_classes, guidance=guidance,
                                 interval=(0.1, 1.0), skip_unguided=False)
    return x + v * dt
  return step
