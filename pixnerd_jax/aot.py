"""Ahead-of-time compile of the real train step for a TPU topology, from a CPU host.

  python -m pixnerd_jax.aot --config=configs/imagenet512.py --topology=v5p:4x4x4 \
      --config.mesh.data=1 --config.mesh.fsdp=-1 --step_time_s=1.2

No TPU is needed, only libtpu (`pip install "jax[tpu]"`): it describes the named slice as
compile-only devices, and XLA's TPU compiler builds the same program the pod would run
(same mesh, shardings, donation). Prints per-chip memory and FLOPs per step, and exits 1
when the step does not fit in the chip's HBM, so a config can be checked before a pod is
booked.
"""

import os
import sys

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from pixnerd_jax.runtime import cli
from pixnerd_jax.runtime import console
from pixnerd_jax.runtime import mesh as mesh_lib
from pixnerd_jax.training import flops as flops_lib
from pixnerd_jax.training import validation
from pixnerd_jax.training.aot_compile import (CHIPS, GIB, AotError, Compiled, oom_gib,
                                              compile_train_step, does_not_fit_message,
                                              flops_per_chip, memory_per_chip,
                                              topology_devices)

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Flags are defined only when run as a program, so tests can import the helpers
  next to main.py (which defines --config too)."""
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/imagenet256.py.",
                                  lock_config=True)
  flags.DEFINE_string("topology", None,
                      "TPU slice as GENERATION:SHAPE: v4:2x2x1, v5p:4x4x4, v5e:2x2, v6e:8x8 "
                      "(3-D shapes for v4/v5p, 2-D for v5e/v6e; chips = product).")
  flags.DEFINE_float("step_time_s", None, "A measured step time; prints the FLOP "
                     "utilisation it implies.")
  flags.DEFINE_float("hbm_gib", None, "Override the chip's HBM (GiB) for the fit check.")
  flags.DEFINE_bool("dry_run", False, "Build the slice's devices, the mesh and the train "
                    "program and lower the step, but skip XLA's compile (minutes for XL): "
                    "checks the config and topology in seconds; no memory or FLOPs.")
  flags.mark_flags_as_required(["config", "topology"])


def _report(topology, generation, devices, config, result: Compiled, hbm_gib: float,
            step_time_s: float | None) -> float:
  """Prints the report; returns the total GiB per chip."""
  chip = CHIPS[generation]
  chips = len(devices)
  hosts = len({d.process_index for d in devices})
  mem = memory_per_chip(result.compiled)
  res = config.data.resolution
  print(f"topology        {topology} ({devices[0].device_kind}, {chips} chips, {hosts} hosts)")
  print("mesh            " + " ".join(f"{k}={v}" for k, v in result.mesh.shape.items()))
  print(f"model           {config.model.get('preset', '?')} {config.model.dtype}, "
        f"{result.num_params:,} params, remat_policy={config.model.remat_policy}, "
        f"REPA {'on' if config.repa.enabled else 'off'}")
  print(f"batch           {config.batch_size} global, {config.batch_size // chips} per chip, "
        f"{res}x{res}")
  print(f"compile         {result.lower_seconds:.1f} s lowering + "
        f"{result.compile_seconds:.1f} s XLA")
  print("memory per chip (XLA memory_analysis):")
  for key, value in mem.items():
    print(f"  {key:<16}{value / GIB:9.3f} GiB")
  print(f"  HBM             {hbm_gib:9.3f} GiB ({100 * mem['total'] / GIB / hbm_gib:.0f}% used)")
  if mem["temporaries"] == 0:
    # Seen for small programs on v4/v5e/v6e (libtpu 0.0.42), never on v5p.
    print(f"  note: no temporaries in HBM reported ({generation} may keep small ones in "
          "on-chip memory, or the analysis left them out): the total may be a lower bound; "
          "the same per-chip batch and mesh on a v5p topology shows them.")
  flops = flops_per_chip(result.compiled)
  hidden = flops_lib.xla_undercounts(config.model)
  if hidden:
    # E.g. XLA's cost analysis counts a while loop's body once, not once per trip.
    xla_says = "none" if flops is None else f"{flops:.4g}"
    flops = flops_lib.train_step_flops(config.model, config.batch_size, res, res) / chips
    print(f"FLOPs per step  {flops:.4g} per chip, {flops * chips:.4g} all chips (analytic "
          f"count of the model, no recomputation or frozen encoders: {hidden} hides FLOPs "
          f"from XLA's cost analysis, which says {xla_says} per chip)")
  elif flops is not None:
    print(f"FLOPs per step  {flops:.4g} per chip, {flops * chips:.4g} all chips "
          "(XLA cost analysis; includes remat recomputation)")
  if flops is None:
    print("FLOPs per step  unavailable (no cost analysis)")
  else:
    floor = flops / chip.peak_bf16_flops
    print(f"step time floor {floor:.3f} s at the {chip.peak_bf16_flops / 1e12:.0f} TFLOP/s "
          "bf16 peak per chip")
    if step_time_s:
      print(f"utilisation     {100 * floor / step_time_s:.1f}% of peak at "
            f"{step_time_s:g} s/step")
  return mem["total"] / GIB


def _report_dry_run(topology, devices, config, result: Compiled) -> None:
  print(f"topology        {topology} ({devices[0].device_kind}, {len(devices)} chips)")
  print("mesh            " + " ".join(f"{k}={v}" for k, v in result.mesh.shape.items()))
  print(f"model           {config.model.get('preset', '?')} {config.model.dtype}, "
        f"{result.num_params:,} params, REPA {'on' if config.repa.enabled else 'off'}")
  print(f"batch           {config.batch_size} global, {config.batch_size // len(devices)} "
        "per chip")
  print(f"dry run         the step lowered in {result.lower_seconds:.1f} s; XLA's compile "
        "skipped, so no memory or FLOPs: run without --dry_run for those")


def _validate(config: ml_collections.ConfigDict) -> None:
  """The trainer's checks, except that REPA may go without its DINOv2 weights and MeanFlow
  distillation without its teacher's: only their shapes are compiled against (ViT-B/14
  unless config.repa.dino_checkpoint names others; the teacher's model.json where the path
  exists here, else the student's config.model)."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.repa.enabled and not config.repa.dino_checkpoint:
    config.repa.dino_checkpoint = "<ViT-B/14 shapes>"
  if config.meanflow.enabled and config.meanflow.teacher:
    config.meanflow.teacher = ""  # its folder need not be on the compiling host
  if config.model.get("conditioning", "class") == "text" and not config.text_encoder.path:
    config.text_encoder.stand_in = True  # Qwen3-1.7B shapes stand in for the weights
    if config.data.name != "digits_captions":
      config.data.name = "digits_captions"  # only the captioned kind matters here
  validation.validate_config(config, platform="tpu")


@console.entry_point(known=(AotError, validation.ConfigError, mesh_lib.MeshError), code=2)
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.quiet_start()
  config = FLAGS.config
  _validate(config)
  with console.libtpu_noise_filtered():
    generation, devices = topology_devices(FLAGS.topology)
  hbm_gib = FLAGS.hbm_gib or CHIPS[generation].hbm_gib
  if FLAGS.dry_run:
    _report_dry_run(FLAGS.topology, devices, config,
                    compile_train_step(config, devices, compile_step=False))
    return 0
  try:
    result = compile_train_step(config, devices)
  except jax.errors.JaxRuntimeError as e:
    oom = oom_gib(str(e))
    if oom is None:
      raise
    print("error: " + does_not_fit_message(oom[0], oom[1], config.batch_size // len(devices)),
          file=sys.stderr)
    print(f"(XLA: {console.summary(e, 300)})", file=sys.stderr)  # XLA's own account
    return 1
  total = _report(FLAGS.topology, generation, devices, config, result, hbm_gib,
                  FLAGS.step_time_s)
  if total > hbm_gib:
    print("error: " + does_not_fit_message(total, hbm_gib, config.batch_size // len(devices)),
          file=sys.stderr)
    sys.exit(1)
  print(f"fits            {total:.2f} of {hbm_gib:g} GiB per chip")


def _compile_only_environment() -> None:
  """This tool only compiles. Keep JAX on the CPU backend so it never opens local TPU
  chips, and let libtpu load without its machine-wide lock: with libtpu installed every
  JAX process takes /tmp/libtpu_lockfile, and another one running would otherwise make
  the topology call fail ('multi-process lockfile')."""
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  jax.config.update("jax_platforms", "cpu")
  # A persistent cache (JAX_COMPILATION_CACHE_DIR) cannot load executables compiled for
  # devices that are not there; JAX would warn at every run.
  jax.config.update("jax_enable_compilation_cache", False)


if __name__ == "__main__":
  _compile_only_environment()
  _define_flags()
  cli.run(main)
