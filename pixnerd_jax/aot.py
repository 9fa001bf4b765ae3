"""Ahead-of-time compile of the real train step for a TPU topology, from a CPU host.

  python -m pixnerd_jax.aot --config=configs/imagenet512.py --topology=v5p:4x4x4 \
      --config.mesh.data=1 --config.mesh.fsdp=-1 --step_time_s=1.2

No TPU is needed, only libtpu (`pip install "jax[tpu]"`): it describes the named slice as
compile-only devices, and XLA's TPU compiler builds the same program the pod would run
(same mesh, shardings, donation). Prints per-chip memory and FLOPs per step, and exits 1
when the step does not fit in the chip's HBM, so a config can be checked before a pod is
booked.
"""

import dataclasses
import math
import os
import re
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags

from pixnerd_jax import cli
from pixnerd_jax import console
from pixnerd_jax import models
from pixnerd_jax import repa
from pixnerd_jax import text_encoder
from pixnerd_jax import sharding
from pixnerd_jax import train
from pixnerd_jax import validation
from pixnerd_jax.models import dinov2
from pixnerd_jax.models import qwen3

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


GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """What the report needs to know about one TPU generation."""
  name: str               # device_kind as JAX reports it
  hbm_gib: float
  peak_bf16_flops: float  # per chip, dense
  torus_dims: int         # 3: v4/v5p (4 chips per host); 2: v5e/v6e
  # 'megacore' fuses a chip's two TensorCores into one JAX device, as on a real v4/v5p
  # VM; without it the topology would list two devices per chip.
  chip_config: str


CHIPS = {
    "v4": Chip("TPU v4", 32, 275e12, 3, "megacore"),
    "v5e": Chip("TPU v5 lite", 16, 197e12, 2, "default"),
    "v5p": Chip("TPU v5", 95, 459e12, 3, "megacore"),
    "v6e": Chip("TPU v6 lite", 32, 918e12, 2, "default"),
}


class AotError(Exception):
  """A problem the user can fix (bad topology, config, missing libtpu); exit code 2."""


def parse_topology(topology: str) -> tuple[str, tuple[int, ...]]:
  """'v5p:4x4x4' -> ('v5p', (4, 4, 4)); clear errors for anything else."""
  match = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)*)", topology.strip().lower())
  if not match or match.group(1) not in CHIPS:
    raise AotError(f"--topology={topology!r}: expected GENERATION:SHAPE with GENERATION one "
                   f"of {sorted(CHIPS)}, e.g. v5p:4x4x4, v6e:4x4, v5e:2x2, v4:2x2x1.")
  generation = match.group(1)
  shape = tuple(int(n) for n in match.group(2).split("x"))
  dims = CHIPS[generation].torus_dims
  if len(shape) != dims or min(shape) < 1:
    raise AotError(f"--topology={topology!r}: {generation} slices have a {dims}-D shape, "
                   f"e.g. {generation}:{'x'.join(['2'] * dims)}.")
  return generation, shape


def chips_per_host_bounds(generation: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
  """The host layout of a slice: v4/v5p hosts hold 2x2x1 chips; v5e/v6e slices of up to 8
  chips are one host, larger ones have 2x2 chips per host."""
  full = tuple(shape) + (1,) * (3 - len(shape))
  if CHIPS[generation].torus_dims == 2 and math.prod(shape) <= 8:
    return full
  return tuple(min(n, b) for n, b in zip(full, (2, 2, 1)))


def topology_devices(topology: str):
  """Compile-only TPU devices for the slice (needs libtpu, no TPU)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  generation, shape = parse_topology(topology)
  try:
    desc = topologies.get_topology_desc(
        f"{generation}:{'x'.join(map(str, shape))}", "tpu",
        chip_config_name=CHIPS[generation].chip_config,
        chips_per_host_bounds=chips_per_host_bounds(generation, shape), num_slices=1)
  except RuntimeError as e:
    if "not installed" in str(e):
      raise AotError("libtpu is not installed; `pip install \"jax[tpu]==" + jax.__version__ +
                     "\"` (it compiles for TPUs on any Linux x86-64 host).") from e
    raise AotError(f"--topology={topology!r}: libtpu rejected it: {e}") from e
  return generation, desc.devices


def _with_shardings(shapes, shardings):
  """Shapes (a tree) with shardings (a tree of the same structure, or one sharding)."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, shapes)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def abstract_batch(config: ml_collections.ConfigDict, program: train.TrainProgram):
  """The global batch the trainer feeds the step, as sharded shapes: float32 images
  (and REPA's raw images), int32 labels or caption tokens and mask."""
  res, channels = config.data.resolution, config.model.in_channels
  tokens = (config.batch_size, config.text_encoder.max_length)
  shapes = {"image": jax.ShapeDtypeStruct((config.batch_size, res, res, channels), jnp.float32),
            "raw_image": jax.ShapeDtypeStruct((config.batch_size, res, res, channels),
                                              jnp.float32),
            "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32),
            "input_ids": jax.ShapeDtypeStruct(tokens, jnp.int32),
            "attention_mask": jax.ShapeDtypeStruct(tokens, jnp.int32)}
  return {key: _with_shardings(shapes[key], program.batch_sharding)
          for key in program.batch_keys}


@dataclasses.dataclass
class Compiled:
  compiled: jax.stages.Compiled | None  # None: lowered only (--dry_run)
  mesh: jax.sharding.Mesh
  num_params: int
  lower_seconds: float    # tracing to StableHLO (Python)
  compile_seconds: float  # XLA's TPU compiler


def _dino_shapes(config: ml_collections.ConfigDict):
  """(DinoV2 module, param shapes) for REPA, or (None, None). Without
  config.repa.dino_checkpoint it is DinoV2()'s ViT-B/14 (the reference's): only shapes
  are compiled against, so no weights are needed."""
  if not config.repa.enabled:
    return None, None
  if config.repa.dino_checkpoint:
    dino_model, dino_params = repa.load_dino(config)
    return dino_model, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                    dino_params)
  dino_model = dinov2.DinoV2()
  return dino_model, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32),
                                  dinov2.param_shapes(dino_model))


def _text_encoder_shapes(config: ml_collections.ConfigDict):
  """(TextEncoder, param shapes) of a text model, or (None, None). Without
  config.text_encoder.path it is Qwen3-1.7B's architecture (the reference's) with a
  placeholder tokenizer: only shapes are compiled against, so no weights are needed."""
  if config.model.get("conditioning", "class") != "text":
    return None, None
  te = config.text_encoder
  dtype = jnp.bfloat16 if te.dtype == "bfloat16" else jnp.float32
  if te.path:
    qwen_config = text_encoder.read_config(te.path)
    tokenizer, pad_id = text_encoder.load_tokenizer(te.path)
  else:
    qwen_config = qwen3.QWEN3_1_7B
    tokenizer = text_encoder.word_level_tokenizer([""])
    pad_id = 0
  model = qwen3.Qwen3Model(qwen_config, dtype=dtype, param_dtype=dtype)
  encoder = text_encoder.TextEncoder(model, tokenizer, pad_id, te.max_length,
                                     embed_dim=config.model.txt_embed_dim)
  return encoder, qwen3.param_shapes(model)


def compile_train_step(config: ml_collections.ConfigDict, devices,
                       compile_step: bool = True) -> Compiled:
  """Lowers and compiles the trainer's step (train.build_train_program) for `devices`.

  The state, batch and frozen (REPA encoder) params are ShapeDtypeStructs carrying the
  trainer's shardings, so nothing is allocated; the state is donated as in the trainer,
  so its outputs alias its inputs. compile_step=False stops after lowering.
  """
  if config.batch_size % len(devices):
    raise AotError(f"config.batch_size={config.batch_size} does not split over "
                   f"{len(devices)} chips; use a multiple of {len(devices)}.")
  mesh = sharding.create_mesh(config.mesh, devices=devices)
  dino_model, dino_shapes = _dino_shapes(config)
  encoder, text_shapes = _text_encoder_shapes(config)
  program = train.build_train_program(config, mesh, dino_model, encoder)
  frozen_shapes = {name: shapes for name, shapes in (("dino", dino_shapes),
                                                     ("text", text_shapes))
                   if shapes is not None}
  frozen = _with_shardings(frozen_shapes, sharding.replicated(mesh))
  start = time.perf_counter()
  with sharding.activate(mesh):  # activation constraints need the mesh and rules
    lowered = program.step.lower(
        _with_shardings(program.state_shapes, program.state_sharding),
        abstract_batch(config, program), frozen)
  lowered_at = time.perf_counter()
  compiled = lowered.compile() if compile_step else None
  return Compiled(compiled, mesh, models.count_params(program.state_shapes.params),
                  lower_seconds=lowered_at - start,
                  compile_seconds=time.perf_counter() - lowered_at)


def memory_per_chip(compiled: jax.stages.Compiled) -> dict[str, int]:
  """Bytes per chip from XLA's memory analysis; total = what must sit in HBM at once."""
  stats = compiled.memory_analysis()
  if stats is None:
    raise AotError("XLA gave no memory analysis for this program.")
  out = {
      "arguments": stats.argument_size_in_bytes,
      "outputs": stats.output_size_in_bytes,
      # Donated state: outputs written over inputs, so counted once.
      "aliased": stats.alias_size_in_bytes,
      "temporaries": stats.temp_size_in_bytes,
      "generated code": stats.generated_code_size_in_bytes,
  }
  out["total"] = (out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"] +
                  out["generated code"])
  return out


def flops_per_chip(compiled: jax.stages.Compiled) -> float | None:
  """XLA's FLOP count of the per-chip (SPMD-partitioned) program, recomputation included."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


# XLA's TPU compiler refuses a program larger than HBM; its messages (libtpu 0.0.42):
_OOM_PATTERNS = (
    re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM "
               r"\(([\d.]+)([KMGT])\)"),
    re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm"),
)


def _oom_gib(message: str) -> tuple[float, float] | None:
  """(needed, capacity) GiB from XLA's out-of-HBM compile error, else None."""
  scale = {"K": 2**-20, "M": 2**-10, "G": 1.0, "T": 2**10}
  for pattern in _OOM_PATTERNS:
    match = pattern.search(message)
    if match:
      return (float(match.group(1)) * scale[match.group(2)],
              float(match.group(3)) * scale[match.group(4)])
  return None


def does_not_fit_message(needed_gib: float, hbm_gib: float, per_chip_batch: int) -> str:
  return (f"does not fit: needs {needed_gib:.2f} GiB per chip of {hbm_gib:.2f} GiB; try "
          f"--config.mesh.data=1 --config.mesh.fsdp=-1 (or another --config.mesh.fsdp=N), "
          f"--config.model.remat_policy=blocks or a smaller per-chip batch (now "
          f"{per_chip_batch} per chip: --config.batch_size=...).")


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
  if flops is None:
    print("FLOPs per step  unavailable (no cost analysis)")
  elif config.model.get("scan_blocks", False):
    # XLA's cost analysis counts a while loop's body once, not once per trip.
    print(f"FLOPs per step  not counted: with scan_blocks XLA counts the scanned block once "
          f"({flops:.4g} per chip is a lower bound); rerun with "
          "--config.model.scan_blocks=False for FLOPs and utilisation (same maths)")
  else:
    print(f"FLOPs per step  {flops:.4g} per chip, {flops * chips:.4g} all chips "
          "(XLA cost analysis; includes remat recomputation)")
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
  """The trainer's checks, except that REPA may go without its DINOv2 weights: only their
  shapes are compiled against (ViT-B/14 unless config.repa.dino_checkpoint names others)."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.repa.enabled and not config.repa.dino_checkpoint:
    config.repa.dino_checkpoint = "<ViT-B/14 shapes>"
  if config.model.get("conditioning", "class") == "text" and not config.text_encoder.path:
    config.text_encoder.stand_in = True  # Qwen3-1.7B shapes stand in for the weights
    if config.data.name != "digits_captions":
      config.data.name = "digits_captions"  # only the captioned kind matters here
  validation.validate_config(config, platform="tpu")


@console.entry_point(known=(AotError, validation.ConfigError), code=2)
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
    oom = _oom_gib(str(e))
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
