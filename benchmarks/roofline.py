"""How close the CPU train and sampling steps run to what this machine's matmuls can do.

  python benchmarks/roofline.py                      # S/8, 64 px, batch 16, float32
  python benchmarks/roofline.py --torch              # also torch's matmul rate

Prints, for the settings of benchmarks/vs_reference.py:
  * the FLOPs of our train step and of one CFG Euler step (XLA's cost analysis of the
    compiled programs, forward + backward + AdamW + EMA for training), and the step
    times measured here, hence the achieved GFLOP/s;
  * the same model's forward FLOPs split by part (counted from the shapes by
    pixnerd_jax/training/flops.py, the count the trainer's MFU uses where XLA's misses
    FLOPs), so it is clear which matmuls the time is spent in;
  * the attainable matmul rate of this machine: square float32 GEMMs, and the model's own
    dominant GEMM shape, under XLA (and torch with --torch).
The ratio achieved / attainable bounds what any reformulation of the same maths can gain:
a step already at 80% of the GEMM rate cannot get 2x faster without doing fewer FLOPs.
"""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

os.environ.setdefault("JAX_PLATFORMS", "cpu")
from pixnerd_jax.runtime import host_malloc  # pylint: disable=g-import-not-at-top

host_malloc.for_cpu_backend(os.environ["JAX_PLATFORMS"])

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from pixnerd_jax.runtime import mesh as sharding  # pylint: disable=g-import-not-at-top
from pixnerd_jax.training import flops as flops_lib  # pylint: disable=g-import-not-at-top


def _gemm_rate(m: int, k: int, n: int, dtype, repeats: int) -> float:
  """GFLOP/s of an (m, k) @ (k, n) matmul under XLA."""
  a = jnp.ones((m, k), dtype)
  b = jnp.ones((k, n), dtype)
  fn = jax.jit(jnp.matmul)
  _, seconds = common.compile_and_time(fn, (a, b), repeats)
  return 2 * m * k * n / seconds / 1e9


def _torch_gemm_rate(m: int, k: int, n: int, repeats: int) -> float | None:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  a, b = torch.ones(m, k), torch.ones(k, n)
  a @ b
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - start)
  return 2 * m * k * n / float(np.median(times)) / 1e9


def main(argv=None):
  parser = common.model_parser(__doc__, repeats=5)
  parser.add_argument("--torch", action="store_true", help="also time torch's matmul")
  args = parser.parse_args(argv)
  fields = common.check_model_args(parser, args)

  program, images, labels = common.c2i_train_program(args)
  mesh = program.mesh
  print(f"{args.preset}, {args.resolution} px, batch {args.batch}, {args.dtype}, "
        f"{jax.device_count()} device(s), {os.cpu_count()} CPU(s)")

  with sharding.activate(mesh):
    state = jax.jit(program.make_state, out_shardings=program.state_sharding)()
    batch = jax.device_put({"image": images, "label": labels}, program.batch_sharding)
    train_compiled = program.step.lower(state, batch, None).compile()
    train_flops = flops_lib.xla_flops(train_compiled) or 0.0
    holder = {"state": state}

    def train_step():
      holder["state"], metrics = train_compiled(holder["state"], batch, None)
      return metrics
    jax.block_until_ready(train_step())
    train_s = common.median_seconds(train_step, repeats=args.repeats)

    model = program.model

    euler_cfg_step = common.cfg_euler_step(model)
    noise = jax.random.normal(jax.random.key(2), images.shape, jnp.float32)
    sample_args = (holder["state"].ema_params, noise, labels)
    sample_compiled = euler_cfg_step.lower(*sample_args).compile()
    sample_flops = flops_lib.xla_flops(sample_compiled) or 0.0
    jax.block_until_ready(sample_compiled(*sample_args))
    sample_s = common.median_seconds(sample_compiled, *sample_args, repeats=args.repeats)

  parts = flops_lib.forward_flops(fields, args.batch, args.resolution, args.resolution)
  total = sum(parts.values())
  print(f"\nforward FLOPs of one pass at batch {args.batch}, by part (counted from shapes):")
  for name, flops in parts.items():
    print(f"  {name:34s} {flops / 1e9:8.4g} GFLOP  {100 * flops / total:5.1f}%")
  print(f"  {'total':34s} {total / 1e9:8.4g} GFLOP")

  p, d = fields["patch_size"], fields["hidden_size"]
  dx, hidden = fields["hidden_size_x"], fields["hidden_size_x"] * fields["nerf_mlpratio"]
  patches = args.batch * (args.resolution // p) ** 2
  gemms = [("square 2048", 2048, 2048, 2048), ("square 1024", 1024, 1024, 1024),
           (f"field generator {patches}x{d}x{2 * dx * hidden}", patches, d, 2 * dx * hidden),
           (f"trunk MLP {patches}x{d}x{int(d * 8 / 3)}", patches, d, int(d * 8 / 3))]
  print("\nattainable matmul rate (float32):")
  best = 0.0
  for name, m, k, n in gemms:
    rate = _gemm_rate(m, k, n, jnp.float32, repeats=10)
    best = max(best, rate)
    line = f"  {name:40s} XLA {rate:7.1f} GFLOP/s"
    if args.torch:
      torch_rate = _torch_gemm_rate(m, k, n, repeats=10)
      line += "" if torch_rate is None else f"   torch {torch_rate:7.1f} GFLOP/s"
    print(line)

  print("\nour steps (XLA cost analysis; time measured here):")
  for name, flops, seconds in (("train step", train_flops, train_s),
                               ("CFG Euler step (2x batch)", sample_flops, sample_s)):
    rate = flops / seconds / 1e9
    print(f"  {name:28s} {flops / 1e9:8.4g} GFLOP  {seconds * 1e3:7.1f} ms  "
          f"{args.batch / seconds:6.2f} img/s  {rate:6.1f} GFLOP/s = "
          f"{100 * rate / best:4.0f}% of the best GEMM rate")


if __name__ == "__main__":
  main()
