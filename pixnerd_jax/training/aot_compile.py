"""Ahead-of-time compile of the real train step for a TPU topology, from a CPU host: the
slice's compile-only devices (libtpu), the trainer's mesh, shardings and donation over
them, and XLA's memory and FLOP accounts of the result. The command is
`python -m pixnerd_jax.aot`.
"""

import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp
import ml_collections

from pixnerd_jax import models
from pixnerd_jax.training import repa
from pixnerd_jax.models import text_encoder
from pixnerd_jax.embedded import stand_in_text_encoder
from pixnerd_jax.runtime import mesh as mesh_lib
from pixnerd_jax.training import flops
from pixnerd_jax.training import train
from pixnerd_jax.models import dinov2
from pixnerd_jax.models import qwen3





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


def _chip(kind: str, hbm_gib: float, torus_dims: int, chip_config: str) -> Chip:
  return Chip(kind, hbm_gib, flops.peak_flops(kind), torus_dims, chip_config)


CHIPS = {
    "v4": _chip("TPU v4", 32, 3, "megacore"),
    "v5e": _chip("TPU v5 lite", 16, 2, "default"),
    "v5p": _chip("TPU v5", 95, 3, "megacore"),
    "v6e": _chip("TPU v6 lite", 32, 2, "default"),
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
    tokenizer = stand_in_text_encoder.word_level_tokenizer([""])
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
  mesh = mesh_lib.create_mesh(config.mesh, devices=devices)
  dino_model, dino_shapes = _dino_shapes(config)
  encoder, text_shapes = _text_encoder_shapes(config)
  program = train.build_train_program(config, mesh, dino_model, encoder)
  frozen_shapes = {name: shapes for name, shapes in (("dino", dino_shapes),
                                                     ("text", text_shapes))
                   if shapes is not None}
  frozen = _with_shardings(frozen_shapes, mesh_lib.replicated(mesh))
  if program.teacher is not None:  # MeanFlow distillation: sharded as the student
    frozen["teacher"] = _with_shardings(models.param_shapes(program.teacher),
                                        program.teacher_sharding)
  start = time.perf_counter()
  with mesh_lib.activate(mesh):  # activation constraints need the mesh and rules
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
  return flops.xla_flops(compiled)


# XLA's TPU compiler refuses a program larger than HBM; its messages (libtpu 0.0.42):
_OOM_PATTERNS = (
    re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM "
               r"\(([\d.]+)([KMGT])\)"),
    re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm"),
)


def oom_gib(message: str) -> tuple[float, float] | None:
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












