"""Text-to-image sampling: prompt files, per-sample seeds, any size, GenEval and DPG-Bench
layouts read back as their scorers read them, resuming, and the chunked field decoder."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import models as presets
from configs import t2i_sft512
from configs import tiny_t2i
from pixnerd_jax.training import checkpoint
from pixnerd_jax.sampling import text_to_image as sample_t2i
from pixnerd_jax.sampling.trained_params import load_checkpoint
from pixnerd_jax.models import text_encoder
from pixnerd_jax.embedded import stand_in_text_encoder
from pixnerd_jax.sampling import dpg
from pixnerd_jax.sampling import geneval
from pixnerd_jax.models import build_model, dummy_inputs, init_params, param_shapes
from tests import device_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red cat on a sofa", "two green birds", "a blue dog"]
# Three steps of AdamLM with CFG: quick, and guided on every step but the first.
SAMPLER = dict(sampler="adamlm", num_steps=3, guidance=4.0, timeshift=3.0)
_jit_init = jax.jit(init_params, static_argnums=0)


def _perturbed_params(model, seed):
  """Random params with the zero-initialised output layer perturbed too (non-trivial v)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.05, p.shape).astype(np.float32),
                      _jit_init(model, jax.random.key(seed)))


def make_tiny_t2i_checkpoint(path: str, config) -> str:
  """A tiny_t2i params checkpoint with a random 16-wide text encoder in path/text_encoder
  (padded to the model's 32 text channels when loaded)."""
  model_config = {k: v for k, v in config.model.items() if k != "preset"}
  checkpoint.save_params(path, _perturbed_params(build_model(config.model), 0), model_config)
  tokenizer = stand_in_text_encoder.word_level_tokenizer(PROMPTS + ["a handwritten seven"])
  encoder_config = stand_in_text_encoder.stand_in_config(
      16, tokenizer.get_vocab_size(with_added_tokens=True), 1, config.text_encoder.max_length)
  encoder, params = text_encoder.TextEncoder.random(
      encoder_config, tokenizer, seed=1, max_length=config.text_encoder.max_length)
  encoder.save_pretrained(os.path.join(path, text_encoder.STAND_IN_DIR), params)
  return path


@pytest.fixture(scope="module")
def config():
  return tiny_t2i.get_config()  # 16 px, patch 4: sizes are multiples of 4


@pytest.fixture(scope="module")
def ckpt(config, tmp_path_factory):
  return make_tiny_t2i_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny_t2i"), config)


def _run(config, ckpt, out, **kwargs):
  kwargs = {**SAMPLER, "batch_size": 4, **kwargs}
  return sample_t2i.run_text(config, ckpt, str(out), **kwargs)


def _png(path):
  return np.asarray(Image.open(path))


def _prompt_images(out, num_prompts, n):
  return np.stack([[_png(sample_t2i.image_path(str(out), i, k)) for k in range(n)]
                   for i in range(num_prompts)])


@pytest.fixture(scope="module")
def prompt_run(config, ckpt, tmp_path_factory):
  out = tmp_path_factory.mktemp("prompts")
  _run(config, ckpt, out, prompts=PROMPTS, samples_per_prompt=2)
  return out, _prompt_images(out, len(PROMPTS), 2)


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("preset,size,scaling", [("tiny", (16, 16), None),
                                                 ("tiny_t2i", (32, 48), (2.0, 3.0))])
def test_chunked_field_decoder_matches_the_unchunked_one(preset, size, scaling):
  model = build_model(presets.get(preset, num_classes=10)).clone(decoder_patch_scaling=scaling)
  params = _perturbed_params(model.clone(decoder_patch_scaling=None), 0)
  x, t, y = dummy_inputs(model, 3, *size)
  x = jax.random.normal(jax.random.key(1), x.shape)
  t = jnp.array([0.1, 0.5, 0.9])
  y = jax.random.normal(jax.random.key(2), y.shape) if y.ndim == 3 else jnp.array([1, 2, 10])
  apply = lambda m: jax.jit(m.apply)({"params": params}, x, t, y)
  whole = apply(model)
  assert float(jnp.abs(whole).max()) > 0.1
  for chunk in (7, 16):  # 3 x 16 patches: padded chunks, then exact ones
    np.testing.assert_allclose(apply(model.clone(decoder_chunk_size=chunk)), whole, rtol=0,
                               atol=1e-6)
  plain = model.clone(decoder_patch_scaling=None)
  assert param_shapes(plain.clone(decoder_chunk_size=1)) == param_shapes(plain)


# ----------------------------------------------------------------------------- settings, sizes


def test_sampler_defaults_are_the_reference_sft_settings_unless_the_config_sets_them():
  from configs import default  # pylint: disable=import-outside-toplevel
  plain = sample_t2i.sampling_settings(default.get_config().sampling)
  assert (plain["sampler"], plain["order"], plain["num_steps"], plain["guidance"],
          plain["guidance_interval"], plain["timeshift"]) == ("adamlm", 2, 25, 4.0, (0.0, 1.0),
                                                              3.0)
  sft = sample_t2i.sampling_settings(t2i_sft512.get_config().sampling)
  assert (sft["sampler"], sft["num_steps"], sft["timeshift"]) == ("adamlm", 25, 3.0)
  tiny = sample_t2i.sampling_settings(tiny_t2i.get_config().sampling)  # sets num_steps=4
  assert (tiny["sampler"], tiny["num_steps"]) == ("euler", 4)
  flags = sample_t2i.sampling_settings(default.get_config().sampling, num_steps=7,
                                       sampler="heun", guidance=None)
  assert (flags["sampler"], flags["num_steps"], flags["guidance"]) == ("heun", 7, 4.0)


def test_sizes_follow_the_trunk_tokens_and_others_are_refused_naming_the_ones_that_work():
  model = build_model(presets.get("XXL/16"))
  big = sample_t2i.model_for_size(model, 512, 1024, 1024)
  assert big.decoder_patch_scaling == (2.0, 2.0)
  assert big.decoder_chunk_size == sample_t2i.DEFAULT_FIELD_CHUNK_PIXELS // (32 * 32)
  wide = sample_t2i.model_for_size(model, 512, 768, 1344, field_chunk_pixels=0)
  assert wide.decoder_patch_scaling == (1.5, 2.625) and wide.decoder_chunk_size is None
  assert sample_t2i.model_for_size(model, 512, 512, 512).decoder_patch_scaling is None
  with pytest.raises(ValueError, match=r"multiples of 32: try height 992 or 1024, width 512"):
    sample_t2i.model_for_size(model, 512, 1000, 512)
  with pytest.raises(ValueError, match="Only text-to-image"):
    sample_t2i.model_for_size(build_model(presets.get("XL/16")), 256, 512, 512)


def test_prompt_files_skip_blank_lines_and_reject_empty_ones(tmp_path):
  path = tmp_path / "prompts.txt"
  path.write_text("a red cat on a sofa\n\n  two green birds  \n", encoding="utf-8")
  assert sample_t2i.read_prompt_file(str(path)) == ["a red cat on a sofa", "two green birds"]
  path.write_text("\n \n", encoding="utf-8")
  with pytest.raises(ValueError, match="no prompts"):
    sample_t2i.read_prompt_file(str(path))
  with pytest.raises(FileNotFoundError, match="Prompt file not found"):
    sample_t2i.read_prompt_file(str(tmp_path / "missing.txt"))


# ----------------------------------------------------------------------------- prompts


def test_prompts_give_pngs_a_grid_and_an_index(prompt_run):
  out, images = prompt_run
  assert images.shape == (3, 2, 16, 16, 3) and images.dtype == np.uint8
  assert len({im.tobytes() for im in images.reshape(6, 16, 16, 3)}) == 6
  assert (out / "prompts.txt").read_text(encoding="utf-8").splitlines() == PROMPTS
  manifest = json.loads((out / "run.json").read_text())
  assert manifest["settings"]["sampler"] == "adamlm" and manifest["settings"]["num_steps"] == 3
  grid = _png(out / "grid.png")
  assert grid.shape == (3 * 18 + 2, 2 * 18 + 2, 3)
  np.testing.assert_array_equal(grid[2:18, 20:36], images[0, 1])


def test_per_sample_seeds_do_not_depend_on_the_batch_and_a_prompt_file_is_the_same(
    config, ckpt, prompt_run, tmp_path):
  _, images = prompt_run
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
  _run(config, ckpt, tmp_path / "out", prompts_file=str(prompts), samples_per_prompt=2,
       batch_size=3)
  np.testing.assert_array_equal(_prompt_images(tmp_path / "out", 3, 2), images)
  # The noise of sample k of prompt i is normal(fold_in(key(seed), 2 i + k)).
  model, params, _ = load_checkpoint(ckpt, config)
  encoder, text_params = sample_t2i.load_text_encoder(config, model, ckpt)
  settings = sample_t2i.sampling_settings(config.sampling, **SAMPLER)
  from pixnerd_jax.diffusion import samplers  # pylint: disable=import-outside-toplevel
  noise = sample_t2i.noise_for(0, [5], (16, 16, 3))
  direct = jax.jit(lambda params, noise, text, null: samplers.sample(
      lambda x, t, y: model.apply({"params": params}, x, t, y), noise, text, null_class=null,
      **settings))(params, noise, encoder.encode_texts(text_params, [PROMPTS[2]]),
                   encoder.unconditional(text_params))
  diff = np.abs(sample_t2i.images_lib.to_uint8(direct)[0].astype(int) - images[2, 1])
  assert diff.max() <= 1


def test_non_square_upscaled_output_and_chunked_decoding_agree(config, ckpt, tmp_path):
  kw = dict(prompts=PROMPTS[:2], samples_per_prompt=2, height=32, width=48)
  _run(config, ckpt, tmp_path / "whole", field_chunk_pixels=0, **kw)
  _run(config, ckpt, tmp_path / "chunked", field_chunk_pixels=100, **kw)  # 1 patch of 8x12
  whole = _prompt_images(tmp_path / "whole", 2, 2)
  chunked = _prompt_images(tmp_path / "chunked", 2, 2)
  assert whole.shape == (2, 2, 32, 48, 3) and whole.std() > 10
  assert np.abs(whole.astype(int) - chunked.astype(int)).max() <= 1
  with pytest.raises(ValueError, match="multiples of 4: try height 28 or 32"):
    _run(config, ckpt, tmp_path / "bad", **(kw | {"height": 30}))


def test_resume_skips_finished_prompts_and_other_settings_are_refused(
    config, ckpt, prompt_run, tmp_path):
  out = tmp_path / "out"
  _run(config, ckpt, out, prompts=PROMPTS, samples_per_prompt=2)
  kept = sample_t2i.image_path(str(out), 0, 0)
  os.utime(kept, (1, 1))
  os.remove(sample_t2i.image_path(str(out), 1, 1))
  _run(config, ckpt, out, prompts=PROMPTS, samples_per_prompt=2)
  assert os.path.getmtime(kept) == 1
  assert os.path.getmtime(sample_t2i.image_path(str(out), 1, 0)) > 1
  np.testing.assert_array_equal(_prompt_images(out, 3, 2), prompt_run[1])
  with pytest.raises(ValueError, match="other settings"):
    _run(config, ckpt, out, prompts=PROMPTS, samples_per_prompt=2, seed=1)
  with pytest.raises(ValueError, match="other settings"):
    _run(config, ckpt, out, prompts=PROMPTS[:2], samples_per_prompt=2)


# ----------------------------------------------------------------------------- GenEval, DPG


def _geneval_metadata(tmp_path, prompts):
  lines = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": p}
           for p in prompts]
  path = tmp_path / "evaluation_metadata.jsonl"
  path.write_text("".join(json.dumps(m) + "\n" for m in lines), encoding="utf-8")
  return path, lines


def _read_like_geneval(imagedir):
  """What djghosh13/geneval's evaluate_images.py reads: digit folders, their
  metadata.jsonl (json.load) and samples/ files matching r'\\d+\\.png'."""
  found = {}
  for sub in os.listdir(imagedir):
    folder = os.path.join(imagedir, sub)
    if not os.path.isdir(folder) or not sub.isdigit():
      continue
    with open(os.path.join(folder, "metadata.jsonl")) as fp:
      metadata = json.load(fp)
    images = {name: np.asarray(Image.open(os.path.join(folder, "samples", name)))
              for name in os.listdir(os.path.join(folder, "samples"))
              if re.match(r"\d+\.png", name)}
    found[sub] = (metadata, images)
  return found


def _read_like_dpg(image_root, resolution):
  """What TencentQQGYLab/ELLA's compute_dpg_bench.py reads: every file of the folder, its
  key (name before the first dot) and the four --resolution crops."""
  crops = [(0, 0, resolution, resolution), (resolution, 0, resolution * 2, resolution),
           (0, resolution, resolution, resolution * 2),
           (resolution, resolution, resolution * 2, resolution * 2)]
  found = {}
  for fn in os.listdir(image_root):
    image = Image.open(os.path.join(image_root, fn))
    found[fn.split(".")[0]] = [np.asarray(image.crop(c)) for c in crops]
  return found


def test_geneval_layout_reads_back_as_the_evaluator_reads_it_and_resumes(config, ckpt,
                                                                         tmp_path):
  path, lines = _geneval_metadata(tmp_path, PROMPTS)
  out = tmp_path / "geneval"
  _run(config, ckpt, out, geneval=str(path), samples_per_prompt=2)
  found = _read_like_geneval(str(out))
  assert sorted(found) == ["00000", "00001", "00002"]
  for i, line in enumerate(lines):
    metadata, images = found[f"{i:05d}"]
    assert metadata == line and sorted(images) == ["0000.png", "0001.png"]
    assert all(im.shape == (16, 16, 3) for im in images.values())
  # Sample k of every prompt starts from noise k: a prompt alone gives the same images.
  (tmp_path / "alone").mkdir()
  alone, _ = _geneval_metadata(tmp_path / "alone", [PROMPTS[2]])
  _run(config, ckpt, tmp_path / "geneval_alone", geneval=str(alone), samples_per_prompt=2)
  single = _read_like_geneval(str(tmp_path / "geneval_alone"))["00000"][1]
  for name in single:
    np.testing.assert_array_equal(single[name], found["00002"][1][name])
  # Resume: an unfinished prompt (no metadata.jsonl yet) is made again, the others kept.
  os.remove(out / "00001" / "metadata.jsonl")
  os.utime(out / "00000" / "samples" / "0000.png", (1, 1))
  _run(config, ckpt, out, geneval=str(path), samples_per_prompt=2)
  assert os.path.getmtime(out / "00000" / "samples" / "0000.png") == 1
  assert _read_like_geneval(str(out))["00001"][0] == lines[1]


def test_dpg_layout_is_the_2x2_grid_the_scorer_crops(config, ckpt, tmp_path):
  prompts_dir = tmp_path / "dpg_prompts"
  prompts_dir.mkdir()
  names = ["10", "2", "dog"]
  for name, prompt in zip(names, PROMPTS):
    (prompts_dir / f"{name}.txt").write_text(prompt + "\n", encoding="utf-8")
  out = tmp_path / "dpg"
  _run(config, ckpt, out, dpg=str(prompts_dir))
  assert sorted(os.listdir(out)) == ["10.png", "2.png", "dog.png"]  # nothing else
  found = _read_like_dpg(str(out), 16)
  assert sorted(found) == sorted(names)
  # Crop k is sample k of the prompt: the GenEval layout's image of noise k.
  path, _ = _geneval_metadata(tmp_path, PROMPTS)
  _run(config, ckpt, tmp_path / "geneval", geneval=str(path), samples_per_prompt=4)
  reference = _read_like_geneval(str(tmp_path / "geneval"))
  for i, name in enumerate(names):
    for k in range(4):
      np.testing.assert_array_equal(found[name][k], reference[f"{i:05d}"][1][f"{k:04d}.png"])
  manifest = dpg.read_png_manifest(str(out / "dog.png"))
  assert manifest["layout"] == "dpg" and manifest["settings"]["guidance"] == 4.0
  # Resume skips finished prompts; other settings are refused through the PNGs' record.
  os.remove(out / "2.png")
  os.utime(out / "dog.png", (1, 1))
  _run(config, ckpt, out, dpg=str(prompts_dir))
  assert os.path.getmtime(out / "dog.png") == 1 and (out / "2.png").exists()
  with pytest.raises(ValueError, match="other settings"):
    _run(config, ckpt, out, dpg=str(prompts_dir), seed=3)
  with pytest.raises(ValueError, match="2x2 grid"):
    _run(config, ckpt, tmp_path / "dpg2", dpg=str(prompts_dir), samples_per_prompt=2)
  with pytest.raises(ValueError, match="square crops"):
    _run(config, ckpt, tmp_path / "dpg3", dpg=str(prompts_dir), width=32)


def test_geneval_and_dpg_inputs_are_checked(tmp_path):
  bad = tmp_path / "metadata.jsonl"
  bad.write_text('{"tag": "x", "prompt": "ok"}\n{"tag": "y"}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"metadata.jsonl:2 has no \"prompt\""):
    geneval.read_metadata(str(bad))
  # Without a tag GenEval cannot score the line: refused at start, not after sampling.
  bad.write_text('{"tag": "x", "prompt": "ok"}\n\n{"prompt": "no tag"}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"metadata.jsonl:3 has no \"tag\" string"):
    geneval.read_metadata(str(bad))
  with pytest.raises(ValueError, match="no <name>.txt"):
    dpg.read_prompts(str(tmp_path))


# ----------------------------------------------------------------------------- command


def test_command_dispatches_on_the_model_shards_over_two_devices_and_matches(
    ckpt, prompt_run, tmp_path):
  out, images = prompt_run
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
  env = device_env.with_cpu_devices(2, JAX_PLATFORMS="cpu")
  base = [sys.executable, "-m", "pixnerd_jax.sample", "--config=configs/tiny_t2i.py",
          f"--checkpoint={ckpt}", "--sampler=adamlm", "--num_steps=3", "--guidance=4",
          "--timeshift=3", "--samples_per_prompt=2"]
  done = subprocess.run(base + [f"--prompts={prompts}", f"--out={tmp_path / 'cli'}",
                                "--batch_size=3"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "ETA" in done.stderr and done.stdout.strip().endswith("cli")
  # As the class-conditional command's console (tests/test_sample.py): few, short lines.
  console = (done.stdout + done.stderr).splitlines()
  assert len(console) <= 15 and all(len(line) <= 200 for line in console), console
  for noise in ("oneDNN", "absl::InitializeLog", "Sampling with", "already done"):
    assert noise not in done.stderr, noise
  # 2 devices x 2 per batch: as 1 device x 4 in-process.
  np.testing.assert_array_equal(_prompt_images(tmp_path / "cli", 3, 2), images)
  bad = subprocess.run(base + [f"--out={tmp_path / 'none'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1
  assert "pass exactly one of --prompt, --prompts, --geneval or --dpg" in bad.stderr
  assert not (tmp_path / "none").exists()
  # Class-conditional flags are refused, not ignored, and a refused run makes no --out.
  chunked = subprocess.run(base + ["--prompt=a blue dog", "--num_samples=8", "--chunk_size=4",
                                   f"--out={tmp_path / 'chunked'}"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
  assert chunked.returncode == 1
  last = chunked.stderr.strip().splitlines()[-1]
  assert "--num_samples --chunk_size apply to class-conditional checkpoints" in last, last
  assert "--samples_per_prompt" in last
  assert not (tmp_path / "chunked").exists()
  class_model = tmp_path / "c2i"
  class_model.mkdir()
  (class_model / "model.json").write_text(json.dumps({"conditioning": "class"}))
  c2i = subprocess.run([sys.executable, "-m", "pixnerd_jax.sample", "--config=configs/tiny.py",
                        f"--checkpoint={class_model}", f"--out={tmp_path / 'c2i_out'}",
                        "--prompt=a cat"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
  assert c2i.returncode == 1 and "--prompt need a text-to-image checkpoint" in c2i.stderr


def test_a_refused_run_leaves_no_output_folder(config, ckpt, tmp_path):
  """Settings the layout refuses are found before --out is made."""
  prompts_dir = tmp_path / "dpg_prompts"
  prompts_dir.mkdir()
  (prompts_dir / "a.txt").write_text("a red cat", encoding="utf-8")
  out = tmp_path / "dpg_out"
  with pytest.raises(ValueError, match="4 samples per prompt, not 2"):
    _run(config, ckpt, out, dpg=str(prompts_dir), samples_per_prompt=2)
  with pytest.raises(ValueError, match="must be equal"):
    _run(config, ckpt, out, dpg=str(prompts_dir), height=16, width=32)
  assert not out.exists()


def test_dry_run_traces_the_text_sampler_at_the_asked_size_and_writes_nothing(
    config, ckpt, prompt_run, tmp_path, capsys):
  out = tmp_path / "dry"
  plan = sample_t2i.dry_run_text_report(config, ckpt, str(out), prompts=PROMPTS,
                                    samples_per_prompt=2, height=24, width=32, batch_size=4,
                                    **SAMPLER)
  assert plan["prompts"] == 3 and plan["done"] == 0 and plan["per_call"] == 4
  assert plan["out_shape"] == (4, 24, 32, 3)
  assert plan["settings"]["sampler"] == "adamlm"
  assert "dry run         OK" in capsys.readouterr().out
  assert not out.exists()
  # A finished --out is reported as done; other settings are refused before sampling.
  done = sample_t2i.dry_run_text_report(config, ckpt, str(prompt_run[0]), prompts=PROMPTS,
                                    samples_per_prompt=2, batch_size=4, **SAMPLER)
  assert done["done"] == 3
  with pytest.raises(ValueError, match="other settings"):
    sample_t2i.dry_run_text_report(config, ckpt, str(prompt_run[0]), prompts=PROMPTS,
                               samples_per_prompt=2, seed=5, **SAMPLER)
  with pytest.raises(ValueError, match="exactly one of"):
    sample_t2i.dry_run_text_report(config, ckpt, str(out))
