"""Sample a trained model: python -m pixnerd_jax.sample --config=... --checkpoint=DIR --out=DIR.

--checkpoint is a training workdir (EMA params of its latest checkpoint; --online for the
online ones) or a params checkpoint (`convert checkpoint` output; its model.json gives
the architecture). Sampler settings come from config.sampling, overridden by flags.

Class-conditional checkpoints write --num_samples balanced samples as the ADM evaluation
suite reads them (pixnerd_jax/sampling/class_conditional.py). Text-to-image checkpoints
(model.conditioning="text") sample prompts instead (pixnerd_jax/sampling/text_to_image.py):
--prompt / --prompts FILE, --geneval FILE or --dpg DIR, at any --height x --width.
"""

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from pixnerd_jax.diffusion import samplers
from pixnerd_jax.runtime import cli
from pixnerd_jax.runtime import console
from pixnerd_jax.sampling import class_conditional
from pixnerd_jax.sampling import text_to_image
from pixnerd_jax.training import checkpoint
from pixnerd_jax.training import dry_run

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/imagenet256.py.",
                                lock_config=True)
flags.DEFINE_string("checkpoint", None, "Training workdir or params checkpoint directory.")
flags.DEFINE_string("out", None, "Output directory for chunks, the .npz and the grid.")
flags.DEFINE_integer("num_samples", 50000, "Class-conditional: number of samples (classes "
                     "balanced).")
flags.DEFINE_integer("batch_size", 64, "Samples per model batch on this host (split over "
                     "its local devices; rounded up to a multiple of their count).")
flags.DEFINE_integer("chunk_size", 1000, "Class-conditional: samples per chunk file (the "
                     "unit of resuming).")
flags.DEFINE_integer("seed", 0, "Noise seed: sample i starts from fold_in(key(seed), i).")
flags.DEFINE_bool("online", False, "Training workdir: sample the online params, not EMA.")
flags.DEFINE_integer("step", None, "Training workdir: checkpoint step (default: latest).")
flags.DEFINE_bool("grid", True, "Also write grid.png (a few classes, one per row).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first "
                  "(multi-host; settings from the cluster environment).")
# Overrides of config.sampling (unset: the config's value; sampler defaults to euler).
flags.DEFINE_enum("sampler", None, list(samplers.SAMPLERS), "Sampler.")
flags.DEFINE_integer("num_steps", None, "Sampling steps.")
flags.DEFINE_float("guidance", None, "Classifier-free guidance scale (1 = none).")
flags.DEFINE_float("guidance_interval_min", None, "Guidance only for t > this.")
flags.DEFINE_float("guidance_interval_max", None, "Guidance only for t < this.")
flags.DEFINE_float("timeshift", None, "Time-grid shift (1 = uniform).")
flags.DEFINE_float("last_step", None, "Size of the last step (default 1 / num_steps).")
flags.DEFINE_integer("order", None, "AdamLM order (1-4).")
flags.DEFINE_bool("exact_heun", None, "Heun without reusing the corrector velocity.")
flags.DEFINE_enum("step_fn", None, list(samplers.STEP_FNS), "Euler step (ODE or SDE).")
# Text-to-image checkpoints (text_to_image.py): one prompt source, any size.
flags.DEFINE_multi_string("prompt", None, "Text-to-image: a prompt (repeatable).")
flags.DEFINE_string("prompts", None, "Text-to-image: a file of prompts, one a line.")
flags.DEFINE_string("geneval", None, "Text-to-image: GenEval's evaluation_metadata.jsonl; "
                    "writes <out>/<i:05d>/{metadata.jsonl,samples/<k:04d>.png}.")
flags.DEFINE_string("dpg", None, "Text-to-image: a folder of DPG-Bench prompt files "
                    "<name>.txt; writes <out>/<name>.png, 2x2 grids of 4 samples.")
flags.DEFINE_integer("samples_per_prompt", 4, "Text-to-image: images per prompt.")
flags.DEFINE_integer("height", None, "Text-to-image: image height (default: the config's "
                     "data.resolution); a multiple of resolution / patch_size.")
flags.DEFINE_integer("width", None, "Text-to-image: image width (as --height).")
flags.DEFINE_integer("field_chunk_pixels", text_to_image.DEFAULT_FIELD_CHUNK_PIXELS,
                     "Text-to-image: the neural field decodes at most this many pixels at "
                     "a time (bounds memory at large sizes; 0 = all at once).")
flags.DEFINE_bool("dry_run", False, "Load the checkpoint, check --out and trace the sampler "
                  "on abstract inputs; print the plan and exit without sampling.")
flags.mark_flags_as_required(["config", "checkpoint", "out"])

_PROMPT_SOURCES = ("prompt", "prompts", "geneval", "dpg")
# Flags of one kind of checkpoint only: given for the other kind, they are refused rather
# than silently ignored.
_CLASS_ONLY = ("num_samples", "chunk_size")
_TEXT_ONLY = _PROMPT_SOURCES + ("samples_per_prompt", "height", "width", "field_chunk_pixels")


def _check_flags_fit(text_model: bool) -> None:
  """Refuses flags the checkpoint's kind does not use, naming what to use instead."""
  if text_model:
    given = [f"--{n}" for n in _CLASS_ONLY if FLAGS[n].present]
    if given:
      raise ValueError(
          f"{' '.join(given)} apply to class-conditional checkpoints; {FLAGS.checkpoint} "
          "holds a text-to-image model, which makes --samples_per_prompt images for each "
          "prompt of --prompt, --prompts, --geneval or --dpg (one PNG each, no chunks): "
          "drop " + " and ".join(given) + ".")
  else:
    given = [f"--{n}" for n in _TEXT_ONLY if FLAGS[n].present]
    if given:
      raise ValueError(f"{' '.join(given)} need a text-to-image checkpoint; "
                       f"{FLAGS.checkpoint} holds a class-conditional model.")


@console.entry_point(known=(checkpoint.CheckpointError, ValueError, OSError),
                 oom_hint="lower --batch_size")
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.quiet_start()
  if FLAGS.distributed:
    jax.distributed.initialize()
  overrides = {name: FLAGS[name].value for name in (
      "sampler", "num_steps", "guidance", "guidance_interval_min", "guidance_interval_max",
      "timeshift", "last_step", "order", "exact_heun", "step_fn")}
  text_model = text_to_image.is_text_checkpoint(FLAGS.checkpoint, FLAGS.config)
  _check_flags_fit(text_model)
  if FLAGS.dry_run and text_model:
    return dry_run.report_errors(
        text_to_image.dry_run_text_report, FLAGS.config, FLAGS.checkpoint, FLAGS.out,
        prompts=FLAGS.prompt, prompts_file=FLAGS.prompts, geneval=FLAGS.geneval,
        dpg=FLAGS.dpg, samples_per_prompt=FLAGS.samples_per_prompt, online=FLAGS.online,
        step=FLAGS.step, grid=FLAGS.grid, height=FLAGS.height, width=FLAGS.width,
        batch_size=FLAGS.batch_size, seed=FLAGS.seed,
        field_chunk_pixels=FLAGS.field_chunk_pixels, **overrides)
  if FLAGS.dry_run:
    return dry_run.report_errors(
        class_conditional.dry_run_report, FLAGS.config, FLAGS.checkpoint, FLAGS.out,
        num_samples=FLAGS.num_samples, batch_size=FLAGS.batch_size,
        chunk_size=FLAGS.chunk_size, seed=FLAGS.seed, online=FLAGS.online, step=FLAGS.step,
        **overrides)
  if text_model:
    path = text_to_image.run_text(
        FLAGS.config, FLAGS.checkpoint, FLAGS.out, prompts=FLAGS.prompt,
        prompts_file=FLAGS.prompts, geneval=FLAGS.geneval, dpg=FLAGS.dpg,
        samples_per_prompt=FLAGS.samples_per_prompt, online=FLAGS.online, step=FLAGS.step,
        grid=FLAGS.grid, height=FLAGS.height, width=FLAGS.width,
        batch_size=FLAGS.batch_size, seed=FLAGS.seed,
        field_chunk_pixels=FLAGS.field_chunk_pixels, **overrides)
  else:
    path = class_conditional.run(FLAGS.config, FLAGS.checkpoint, FLAGS.out, num_samples=FLAGS.num_samples,
               batch_size=FLAGS.batch_size, chunk_size=FLAGS.chunk_size, seed=FLAGS.seed,
               online=FLAGS.online, step=FLAGS.step, grid=FLAGS.grid, **overrides)
  if path:
    print(path)


if __name__ == "__main__":
  jax.config.config_with_absl()
  cli.run(main)
