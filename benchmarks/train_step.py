"""Throughput of the trainer's step alone, fed by synthetic data made on the devices.

  python benchmarks/train_step.py --preset S/8 --resolution 64 --batch 16
  python benchmarks/train_step.py --preset XL/16 --resolution 256 --batch 256 \
      --dtype bfloat16 --scan_blocks     # on a pod slice: every device, one batch

The step is the one `python -m pixnerd_jax.main` runs (train.build_train_program), fed by
`data.name = "synthetic"`, so no input pipeline or host-to-device copy is timed. Prints
images/s, TFLOP/s per device and, on devices whose peak is known, MFU, with the FLOP
count used (XLA's cost analysis, or the analytic one where XLA misses FLOPs).
"""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top


def main(argv=None):
  parser = common.model_parser(__doc__, repeats=10)
  parser.add_argument("--scan_blocks", action="store_true", help="nn.scan over DiT blocks")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compile")
  args = parser.parse_args(argv)
  common.check_model_args(parser, args)
  # pylint: disable=g-import-not-at-top
  from configs import default as default_config
  from configs import models as presets
  from pixnerd_jax import data
  from pixnerd_jax.runtime import mesh as mesh_lib
  from pixnerd_jax.training import flops
  from pixnerd_jax.training import train
  config = default_config.get_config()
  config.model = presets.get(args.preset, num_classes=args.num_classes, dtype=args.dtype,
                             scan_blocks=args.scan_blocks)
  config.batch_size = args.batch
  config.data.name = "synthetic"
  config.data.resolution = args.resolution
  config.data.synthetic_num_classes = args.num_classes
  if args.batch % jax.device_count():
    parser.error(f"--batch {args.batch} does not split over {jax.device_count()} devices.")

  program = train.build_train_program(config, mesh_lib.create_mesh(config.mesh))
  batches = data.create_train_iterator(config.data, global_batch_size=args.batch,
                                       seed=0, sharding=program.batch_sharding)

  def next_batch():
    return data.make_global_batch(next(batches), program.batch_sharding,
                                  keys=program.batch_keys)

  with mesh_lib.activate(program.mesh):
    state = jax.jit(program.make_state, out_shardings=program.state_sharding)()
    batch = next_batch()
    start = time.perf_counter()
    state, metrics = program.step(state, batch, {})
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    step_flops = flops.for_train_step(program, config, state, batch, {})
    for _ in range(args.warmup):
      state, metrics = program.step(state, next_batch(), {})
    jax.block_until_ready(metrics)
    # Steps run back to back as in training (dispatch overlaps the device's work).
    start = time.perf_counter()
    for _ in range(args.repeats):
      state, metrics = program.step(state, next_batch(), {})
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / args.repeats

  rates = step_flops.tflops_and_mfu(1.0 / step_s)
  device = jax.devices()[0]
  print(f"{args.preset}{' scan_blocks' if args.scan_blocks else ''}, {args.resolution} px, "
        f"global batch {args.batch}, {args.dtype}, {jax.device_count()} x "
        f"{device.device_kind}, synthetic data")
  print(f"compile + first step  {compile_s:8.1f} s")
  print(f"step                  {step_s * 1e3:8.2f} ms (mean of {args.repeats})")
  print(f"images/s              {args.batch / step_s:8.1f}")
  print(f"TFLOP/s per device    {rates['tflops_per_device']:8.4g}")
  print("MFU                   " + (f"{100 * rates['mfu']:7.2f}%" if "mfu" in rates else
                                    f"   n/a (no peak known for {device.device_kind!r})"))
  print(f"FLOPs per step        {step_flops.per_device:.4g} per device ({step_flops.source})")


if __name__ == "__main__":
  main()
