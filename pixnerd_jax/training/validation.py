"""Config validation, run once at start: every error names the field and the fix."""

import uuid

import jax
import ml_collections
from etils import epath

from pixnerd_jax.models.pixnerd import REMAT_POLICIES

CLASS_DATASETS = ("digits", "tfds", "folder")
CAPTION_DATASETS = ("digits_captions", "caption_folder", "caption_tar", "tfds_captions")
SYNTHETIC = "synthetic"  # either kind: labels or one caption's tokens
DATASETS = CLASS_DATASETS + CAPTION_DATASETS + (SYNTHETIC,)
DIGITS_CLASSES = 10


class ConfigError(ValueError):
  """A config value is invalid; the message names the field and how to fix it."""


def _check(ok: bool, field: str, value, problem: str, fix: str) -> None:
  if not ok:
    raise ConfigError(f"config.{field} = {value!r}: {problem}. Fix: {fix}")


def validate_config(config: ml_collections.ConfigDict, workdir: str | None = None,
                    platform: str | None = None) -> None:
  """Raises ConfigError for the first bad field. platform: where the step will run
  ('cpu', 'gpu', 'tpu'); default jax.default_backend() (aot_compile passes 'tpu')."""
  platform = platform or jax.default_backend()
  m, d, o = config.model, config.data, config.optimizer
  _check(d.name in DATASETS, "data.name", d.name, "unknown dataset",
         f"use one of {DATASETS}")
  _check(d.resolution > 0 and d.resolution % m.patch_size == 0, "data.resolution",
         d.resolution, f"not a positive multiple of model.patch_size={m.patch_size}",
         f"pick a multiple of {m.patch_size}")
  _check(m.hidden_size % m.num_groups == 0, "model.num_groups", m.num_groups,
         f"does not divide model.hidden_size={m.hidden_size}", "choose a divisor")
  head_dim = m.hidden_size // m.num_groups
  _check(head_dim % 4 == 0, "model.num_groups", m.num_groups,
         f"head dim {head_dim} is not a multiple of 4 (2-D RoPE needs x and y pairs)",
         "change num_groups or hidden_size")
  _check(0 < m.num_cond_blocks <= m.num_blocks, "model.num_cond_blocks", m.num_cond_blocks,
         f"must be in 1..model.num_blocks={m.num_blocks}", "lower it or raise num_blocks")
  _check(m.dtype in ("float32", "bfloat16"), "model.dtype", m.dtype, "unknown dtype",
         "use 'float32' or 'bfloat16'")
  _check(m.get("remat_policy", "none") in REMAT_POLICIES, "model.remat_policy",
         m.get("remat_policy"), "unknown remat policy", f"use one of {REMAT_POLICIES}")
  attention = m.get("attention_implementation")
  _check(attention in (None, "xla", "cudnn", "splash"), "model.attention_implementation",
         attention, "unknown attention implementation",
         "use None (XLA), 'cudnn' (GPU) or 'splash' (TPU)")
  if attention == "cudnn":
    _check(platform == "gpu", "model.attention_implementation", attention,
           f"the cuDNN kernel needs a GPU, this is {platform}",
           "leave it unset off GPU")
    _check(m.dtype == "bfloat16", "model.attention_implementation", attention,
           f"cuDNN attention runs in bfloat16, model.dtype is {m.dtype!r}",
           "set --config.model.dtype=bfloat16")
  if attention == "splash":
    _check(platform == "tpu", "model.attention_implementation", attention,
           f"the splash kernel is a TPU (Pallas) kernel, this is {platform}",
           "leave it unset off TPU")
  conditioning = m.get("conditioning", "class")
  _check(conditioning in ("class", "text"), "model.conditioning", conditioning,
         "unknown conditioning", "use 'class' (labels) or 'text' (captions)")
  if conditioning == "text":
    _check(d.name in CAPTION_DATASETS + (SYNTHETIC,), "data.name", d.name,
           "this dataset has class labels, but model.conditioning='text' trains on captions",
           f"use a captioned source, one of {CAPTION_DATASETS}, or a class-conditional "
           "model config")
    _validate_text_encoder(config)
  else:
    _check(d.name in CLASS_DATASETS + (SYNTHETIC,), "data.name", d.name,
           "this dataset has captions, but model.conditioning='class' trains on labels",
           f"use one of {CLASS_DATASETS}, or a text-to-image model config "
           "(e.g. configs/digits_t2i.py)")
  if d.name == "digits" and conditioning == "class":
    _check(m.num_classes == DIGITS_CLASSES, "model.num_classes", m.num_classes,
           "the digits dataset has 10 classes", "set --config.model.num_classes=10")
  if d.name == SYNTHETIC and conditioning == "class":
    classes = d.get("synthetic_num_classes", 10)
    _check(0 < classes <= m.num_classes, "data.synthetic_num_classes", classes,
           f"synthetic labels must be classes of the model (1..{m.num_classes})",
           f"set it to at most model.num_classes={m.num_classes}")
  profile = config.get("profile")
  if profile is not None:
    _check(profile.start_step >= 0, "profile.start_step", profile.start_step,
           "negative", "use 0 (no trace) or the first step to trace")
    _check(profile.num_steps >= 1, "profile.num_steps", profile.num_steps,
           "must trace at least one step", "use 1 or more (3-5 is typical)")

  devices, processes = jax.device_count(), jax.process_count()
  _check(config.batch_size > 0 and config.batch_size % devices == 0, "batch_size",
         config.batch_size, f"must be a positive multiple of the device count ({devices})",
         f"use a multiple of {devices}")
  _check(config.batch_size % processes == 0, "batch_size", config.batch_size,
         f"must split evenly over {processes} processes", f"use a multiple of {processes}")
  _check(config.num_train_steps > 0, "num_train_steps", config.num_train_steps,
         "must be positive", "set a step count")
  for field in ("log_every", "checkpoint_every"):
    _check(config[field] > 0, field, config[field], "must be positive", "set a step interval")
  _check(config.keep_checkpoints >= 1, "keep_checkpoints", config.keep_checkpoints,
         "must keep at least one", "set it to 1 or more")

  _check(o.learning_rate > 0, "optimizer.learning_rate", o.learning_rate, "must be positive",
         "the reference uses 1e-4")
  _check(o.schedule in ("constant", "cosine"), "optimizer.schedule", o.schedule,
         "unknown schedule", "use 'constant' or 'cosine'")
  _check(o.warmup_steps >= 0, "optimizer.warmup_steps", o.warmup_steps, "negative", "use >= 0")
  _check(0.0 <= config.ema_decay < 1.0, "ema_decay", config.ema_decay,
         "must be in [0, 1)", "the reference uses 0.9999")
  diff = config.diffusion
  _check(diff.time_distribution in ("logit_normal", "uniform"), "diffusion.time_distribution",
         diff.time_distribution, "unknown distribution", "use 'logit_normal' or 'uniform'")
  _check(0.0 <= diff.label_dropout < 1.0, "diffusion.label_dropout", diff.label_dropout,
         "must be in [0, 1)", "the reference uses 0.1")
  _check(diff.time_shift > 0, "diffusion.time_shift", diff.time_shift, "must be positive",
         "1.0 means no shift")
  if config.repa.enabled:
    _check(1 <= config.repa.align_layer <= m.num_cond_blocks, "repa.align_layer",
           config.repa.align_layer, f"must be a DiT block in 1..{m.num_cond_blocks}",
           "the reference aligns after block 8")
    _check(bool(config.repa.dino_checkpoint), "repa.dino_checkpoint",
           config.repa.dino_checkpoint, "REPA needs converted DINOv2 ViT-B/14 weights",
           "run `python -m pixnerd_jax.convert_dinov2 dinov2_vitb14_pretrain.pth --out DIR` "
           "and pass --config.repa.dino_checkpoint=DIR, or set --config.repa.enabled=False")
  _validate_meanflow(config)
  if workdir is not None:
    _check_writable(workdir)


def _validate_meanflow(config: ml_collections.ConfigDict) -> None:
  mf, average = config.get("meanflow"), bool(config.model.get("average_velocity", False))
  if config.sampling.get("sampler") == "meanflow":
    _check(average, "sampling.sampler", "meanflow",
           "the meanflow sampler needs an average-velocity model",
           "train one with configs/digits_meanflow.py (model.average_velocity=True)")
  if mf is None or not mf.enabled:
    return
  _check(average, "model.average_velocity", average,
         "MeanFlow training needs the average-velocity model", "set it to True")
  _check(not config.repa.enabled, "repa.enabled", True, "REPA is not wired into the "
         "MeanFlow step", "set --config.repa.enabled=False")
  _check(mf.time_distribution in ("logit_normal", "uniform"), "meanflow.time_distribution",
         mf.time_distribution, "unknown distribution", "use 'logit_normal' or 'uniform'")
  _check(0.0 <= mf.equal_fraction <= 1.0, "meanflow.equal_fraction", mf.equal_fraction,
         "must be in [0, 1]", "MeanFlow uses 0.75")
  aimed = mf.get("grid_fraction", 0.0) + mf.get("grid_end_fraction", 0.0)
  _check(min(mf.get("grid_fraction", 0.0), mf.get("grid_end_fraction", 0.0)) >= 0
         and mf.equal_fraction + aimed <= 1.0, "meanflow.grid_fraction + grid_end_fraction",
         aimed, f"with equal_fraction {mf.equal_fraction} the fractions exceed the batch",
         "keep equal_fraction + grid_fraction + grid_end_fraction <= 1")
  _check(all(int(n) >= 1 for n in mf.get("grid_num_steps", (1,))) and
         len(mf.get("grid_num_steps", (1,))) > 0, "meanflow.grid_num_steps",
         mf.get("grid_num_steps"), "needs step counts >= 1", "e.g. (1, 2, 4)")
  _check(0.0 <= mf.get("teacher_ode_fraction", 0.0) <= 1.0, "meanflow.teacher_ode_fraction",
         mf.get("teacher_ode_fraction"), "must be in [0, 1]", "e.g. 0.25")
  _check(mf.get("teacher_ode_steps", 1) >= 1, "meanflow.teacher_ode_steps",
         mf.get("teacher_ode_steps"), "must be >= 1", "e.g. 8")
  if mf.teacher:
    _check(epath.Path(mf.teacher).is_dir(), "meanflow.teacher", mf.teacher,
           "no such folder", "train the teacher first (python -m pixnerd_jax.main "
           "--config=configs/digits.py --workdir=workdirs/digits) or convert an official "
           "checkpoint (python -m pixnerd_jax.convert checkpoint)")


def _validate_text_encoder(config: ml_collections.ConfigDict) -> None:
  te, m = config.text_encoder, config.model
  if te.path:
    _check(epath.Path(te.path).is_dir(), "text_encoder.path", te.path,
           "no such folder",
           "fetch Qwen3-1.7B once (`huggingface-cli download Qwen/Qwen3-1.7B --local-dir "
           "weights/Qwen3-1.7B`) and pass --config.text_encoder.path=weights/Qwen3-1.7B")
  else:
    _check(bool(te.stand_in), "text_encoder.path", te.path,
           "a text-to-image model needs a text encoder",
           "pass --config.text_encoder.path=<local Qwen3 folder>, or "
           "--config.text_encoder.stand_in=True for a random stand-in (digits_captions)")
    _check(config.data.name in ("digits_captions", SYNTHETIC), "text_encoder.stand_in",
           te.stand_in,
           f"a stand-in builds its tokenizer from a known caption vocabulary, which "
           f"data.name={config.data.name!r} does not have",
           "use a real encoder with --config.text_encoder.path")
  _check(te.max_length == m.txt_max_length, "text_encoder.max_length", te.max_length,
         f"captions must have as many tokens as model.txt_max_length={m.txt_max_length} "
         "(the model's learned text positions)", "make the two equal")
  _check(te.get("stand_in_init_std", 0.02) > 0, "text_encoder.stand_in_init_std",
         te.get("stand_in_init_std"), "must be positive", "Hugging Face's default is 0.02")
  _check(te.dtype in ("float32", "bfloat16"), "text_encoder.dtype", te.dtype,
         "unknown dtype", "use 'bfloat16' (the reference) or 'float32'")
  _check(0.0 <= te.caption_dropout < 1.0, "text_encoder.caption_dropout",
         te.caption_dropout, "must be in [0, 1)", "the reference uses 0.1")


def _check_writable(workdir: str) -> None:
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_probe_{uuid.uuid4().hex}"
    probe.write_text("ok")
    probe.unlink()
  except Exception as e:  # OSError locally, various for gs://
    raise ConfigError(
        f"--workdir={workdir!r} is not writable ({e}). Fix: choose a directory you can "
        "write, or check the bucket's permissions.") from e


def flat_hparams(config: ml_collections.ConfigDict) -> dict:
  """Scalar config values with dotted keys, for TensorBoard's hparams plugin."""
  out = {}

  def visit(prefix, node):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, ml_collections.ConfigDict):
        visit(name + ".", value)
      elif isinstance(value, (bool, int, float, str)):
        out[name] = value
      elif value is None:
        out[name] = "None"
      else:
        out[name] = str(value)

  visit("", config)
  return out
