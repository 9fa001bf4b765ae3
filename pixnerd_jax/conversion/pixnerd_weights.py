"""Official PixNerd checkpoints (c2i and t2i) to Flax params: key names, layouts, the model
config inferred from the weights, the REPA projector, and checks against fixtures of the
official code. The command is `python -m pixnerd_jax.convert`.
"""

import json
import os
import re
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from pixnerd_jax import models
from pixnerd_jax.diffusion import samplers
from pixnerd_jax.models.state_dict import ConversionError, load_state_dict
from pixnerd_jax.training import checkpoint

EMA_PREFIX = "ema_denoiser."
ONLINE_PREFIX = "denoiser."
# Keys the denoiser does not own: REPA's projector lives in the trainer.
_FOREIGN_PREFIXES = ("diffusion_trainer.", "vae.", "conditioner.")





# ----------------------------------------------------------------------------- reading






def select_denoiser(state_dict: Mapping[str, np.ndarray], use_ema: bool = True):
  """Strips the Lightning prefix: EMA weights by default, the online ones on request.

  A plain state_dict (no prefixes) is returned as it is.
  """
  prefix = EMA_PREFIX if use_ema else ONLINE_PREFIX
  has_prefixes = any(k.startswith((EMA_PREFIX, ONLINE_PREFIX)) for k in state_dict)
  if not has_prefixes:
    return {k: v for k, v in state_dict.items() if not k.startswith(_FOREIGN_PREFIXES)}
  selected = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  if not selected:
    raise ConversionError(
        f"No '{prefix}*' keys in the checkpoint; try {'--online' if use_ema else '--ema'}.")
  return selected


# ----------------------------------------------------------------------------- mapping


def flax_path(torch_key: str, ndim: int) -> tuple[str, ...]:
  """Maps a reference key to its Flax param path.

  `blocks.3.attn.qkv.weight` -> ('blocks_3', 'attn', 'qkv', 'kernel'): a numeric part
  joins the name before it; a 2-D `weight` is a Dense kernel, a 1-D one an RMSNorm weight.
  """
  parts = torch_key.split(".")
  if len(parts) == 1:  # a parameter of the model itself, e.g. t2i's y_pos_embedding
    return (torch_key,)
  names: list[str] = []
  for part in parts[:-1]:
    if part.isdigit() and names:
      names[-1] = f"{names[-1]}_{part}"
    else:
      names.append(part)
  leaf = parts[-1]
  if names[-1] == "embedding_table":
    return tuple(names[:-1]) + ("embedding_table",)
  if leaf == "weight" and ndim == 2:
    leaf = "kernel"
  return tuple(names) + (leaf,)


def to_flax_array(torch_key: str, value: np.ndarray) -> np.ndarray:
  if value.ndim == 2 and "embedding_table" not in torch_key:
    return np.ascontiguousarray(value.T)  # torch Linear (out, in) -> Dense (in, out)
  return value


def infer_model_config(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Reads the architecture off the key shapes of a (prefix-free) denoiser state_dict.

  A `y_pos_embedding` key marks the text-to-image model (spec 3.3), a label table the
  class-conditional one.
  """
  text = "y_pos_embedding" in state_dict
  try:
    hidden_size, patch_features = state_dict["s_embedder.proj.weight"].shape
    hidden_size_x, embed_in = state_dict["x_embedder.embedder.0.weight"].shape
    in_channels = state_dict["final_layer.linear.weight"].shape[0]
    if text:
      txt_max_length = state_dict["y_pos_embedding"].shape[1]
      txt_embed_dim = state_dict["y_embedder.proj.weight"].shape[1]
    else:
      num_classes = state_dict["y_embedder.embedding_table.weight"].shape[0] - 1
  except KeyError as e:
    kind = "text-to-image" if text else "class-conditional"
    raise ConversionError(
        f"Not a PixNerd {kind} state_dict: key {e.args[0]!r} is missing.") from e
  patch_size = int(round((patch_features / in_channels) ** 0.5))
  max_freqs = int(round((embed_in - in_channels) ** 0.5))
  block_ids = sorted({int(m.group(1)) for k in state_dict
                      if (m := re.match(r"blocks\.(\d+)\.", k))})
  dit_ids = [i for i in block_ids if f"blocks.{i}.attn.qkv.weight" in state_dict
             or f"blocks.{i}.attn.qkv_x.weight" in state_dict]
  nerf_ids = [i for i in block_ids if f"blocks.{i}.param_generator1.0.weight" in state_dict]
  if not dit_ids or dit_ids != list(range(len(dit_ids))):
    raise ConversionError(f"DiT blocks must be numbered 0..n-1, found {dit_ids}.")
  head_dim = state_dict["blocks.0.attn.q_norm.weight"].shape[0]
  nerf_mlpratio = 2
  if nerf_ids:
    gen_rows = state_dict[f"blocks.{nerf_ids[0]}.param_generator1.0.weight"].shape[0]
    nerf_mlpratio = gen_rows // (2 * hidden_size_x * hidden_size_x)
  config = dict(
      in_channels=int(in_channels), patch_size=patch_size,
      num_groups=int(hidden_size // head_dim), hidden_size=int(hidden_size),
      hidden_size_x=int(hidden_size_x), nerf_mlpratio=int(nerf_mlpratio),
      num_blocks=len(block_ids), num_cond_blocks=len(dit_ids), max_freqs=max_freqs)
  if not text:
    return dict(config, num_classes=int(num_classes))
  text_ids = {int(m.group(1)) for k in state_dict
              if (m := re.match(r"text_refine_blocks\.(\d+)\.", k))}
  return dict(config, conditioning="text", txt_embed_dim=int(txt_embed_dim),
              txt_max_length=int(txt_max_length), num_text_blocks=len(text_ids))


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], param_shapes) -> dict:
  """Fills a Flax param tree (given as shapes, e.g. from jax.eval_shape) from a state_dict.

  Raises ConversionError naming every unexpected, missing or mis-shaped key.
  """
  expected = traverse_util.flatten_dict(param_shapes)
  filled, unexpected, mismatched = {}, [], []
  for key, value in state_dict.items():
    path = flax_path(key, value.ndim)
    if path not in expected:
      unexpected.append(key)
      continue
    array = to_flax_array(key, value)
    if tuple(array.shape) != tuple(expected[path].shape):
      mismatched.append(f"{key}: checkpoint {value.shape} vs model {expected[path].shape}")
      continue
    filled[path] = array.astype(expected[path].dtype)
  missing = ["/".join(p) for p in expected if p not in filled]
  problems = []
  if unexpected:
    problems.append(f"unexpected keys: {sorted(unexpected)}")
  if mismatched:
    problems.append(f"shape mismatches: {mismatched}")
  if missing and not mismatched:
    problems.append(f"model params not filled: {sorted(missing)}")
  if problems:
    raise ConversionError("Checkpoint does not match the model; " + "; ".join(problems))
  return traverse_util.unflatten_dict(filled)


def convert_state_dict(state_dict: Mapping[str, np.ndarray]):
  """Prefix-free state_dict -> (model config dict, Flax params)."""
  model_cfg = infer_model_config(state_dict)
  shapes = models.param_shapes(models.PixNerDiT(**model_cfg))
  return model_cfg, state_dict_to_params(state_dict, shapes)


REPA_PREFIX = "diffusion_trainer.proj."
_REPA_KEYS = tuple(f"{layer}.{leaf}" for layer in ("0.0", "0.2", "0.4")
                   for leaf in ("weight", "bias"))


def extract_repa_projector(state_dict: Mapping[str, np.ndarray]):
  """The REPA projector (`diffusion_trainer.proj.*`) as `repa.Projector` params, or None.

  Returns {"proj_0_0": {"kernel": (D, D), "bias"}, "proj_0_2": ..., "proj_0_4": {"kernel":
  (D, 768), ...}} (torch (out, in) weights transposed), or None when the checkpoint has no
  projector (e.g. a plain denoiser state_dict).
  """
  found = {k[len(REPA_PREFIX):]: v for k, v in state_dict.items() if k.startswith(REPA_PREFIX)}
  if not found:
    return None
  missing = sorted(set(_REPA_KEYS) - set(found))
  unexpected = sorted(set(found) - set(_REPA_KEYS))
  if missing or unexpected:
    raise ConversionError(f"REPA projector keys under {REPA_PREFIX!r}: missing {missing}, "
                          f"unexpected {unexpected}.")
  params = {}
  for key, value in found.items():
    path = flax_path("proj." + key, np.ndim(value))
    params[path] = to_flax_array(key, np.asarray(value, np.float32))
  return traverse_util.unflatten_dict(params)


# ----------------------------------------------------------------------------- commands


def convert_checkpoint(src: str, out: str, use_ema: bool = True) -> dict[str, Any]:
  """Converts SRC to an Orbax params checkpoint in OUT; returns the model config.

  A REPA projector in SRC (`diffusion_trainer.proj.*`) goes to OUT/repa_projector, where
  fine-tuning with REPA (config.init_from=OUT) picks it up.
  """
  full = load_state_dict(src)
  model_cfg, params = convert_state_dict(select_denoiser(full, use_ema=use_ema))
  checkpoint.save_params(out, params, model_cfg)
  projector = extract_repa_projector(full)
  if projector is not None:
    checkpoint.save_params(os.path.join(out, checkpoint.REPA_PROJECTOR_DIR), projector,
                           {"architecture": "repa_projector"})
  return model_cfg


# The reference's heavy-decoder class spans pixel coordinates over 16 (its patch size)
# whatever the patch size; fixtures with smaller patches need it stated.
REFERENCE_HEAVY_DECODER_SPAN = 16.0


def _nhwc(a):
  return np.transpose(a, (0, 2, 3, 1))


def _condition(array):
  """Fixture labels (int64) -> int32; text features stay float32."""
  array = np.asarray(array)
  return array.astype(np.int32) if array.dtype.kind in "iu" else array.astype(np.float32)


def fixture_sampler_runs(fixture: Mapping[str, np.ndarray], cfg: Mapping[str, Any],
                         null_class) -> list[dict[str, Any]]:
  """The sampler runs a fixture holds, in every official fixture format.

  Returns a list of {name, settings (kwargs of samplers.sample), noise, cond, null,
  expected}: the c2i fixture's Euler run (`sample_out`), the samplers fixture's
  `out_<run>` for every run in cfg["runs"], the t2i fixture's AdamLM (`sample_out`) and
  Euler (`euler_sample_out`) runs on text features.
  """
  runs = []

  def add(name, settings, expected_key, cond_key, null):
    absent = [k for k in ("noise", cond_key, expected_key) if k not in fixture]
    if absent:
      raise ConversionError(
          f"The fixture's cfg_json names the sampler run {name!r} but the file lacks its "
          f"arrays {absent}; write the fixture again (formats: "
          "../shared/reference/fixtures/README.md).")
    settings = dict(settings)
    settings["exact_heun"] = settings.pop("exact_henu", settings.get("exact_heun", False))
    kwargs = samplers.settings_from_config(settings)
    if kwargs["sampler"] == "heun":
      # The reference's Heun guides every call, whatever interval it is given.
      kwargs["guidance_interval"] = (-np.inf, np.inf)
    runs.append(dict(name=name, settings=kwargs, noise=_nhwc(fixture["noise"]),
                     cond=_condition(fixture[cond_key]), null=null,
                     expected=_nhwc(fixture[expected_key])))

  if "runs" in cfg:
    for name, settings in cfg["runs"].items():
      add(name, settings, f"out_{name}", "labels", null_class)
  elif "sample_cond_y" in fixture:
    uncond = fixture["uncond_y"].astype(np.float32)
    add("adamlm", dict(cfg["adamlm_sampler"], sampler="adamlm"), "sample_out",
        "sample_cond_y", uncond)
    add("euler", dict(cfg["euler_sampler"], sampler="euler"), "euler_sample_out",
        "sample_cond_y", uncond)
  elif "sample_out" in fixture:
    add("euler", dict(cfg["sampler"], sampler="euler"), "sample_out", "labels", null_class)
  return runs


def verify_fixture(path: str, forward_tol: float = 1e-4, sample_tol: float = 1e-3) -> bool:
  """Runs the converted model and the official samplers' settings on a reference fixture.

  Handles the c2i fixture (forward + Euler), the samplers fixture (Euler, Heun, AdamLM
  runs) and the t2i fixture (forward, heavy-decoder forward, AdamLM and Euler with text
  CFG). Prints each max absolute error; returns whether all are within tolerance.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"Fixture not found: {path}")
  with np.load(path, allow_pickle=False) as data:
    fixture = {k: data[k] for k in data.files}
  # Every format carries the official weights (sd/*) and its settings (cfg_json); which
  # checks run depends on what else it holds (forward pass, heavy decoder, sampler runs).
  if "cfg_json" not in fixture or not any(k.startswith("sd/") for k in fixture):
    missing = [k for k in ("cfg_json", "sd/*") if k not in fixture
               and not (k == "sd/*" and any(n.startswith("sd/") for n in fixture))]
    raise ConversionError(
        f"{path} is not a conversion fixture: it lacks {missing}; verify needs the official "
        "weights (sd/*), cfg_json and at least one forward or sampler run (formats: "
        "../shared/reference/fixtures/README.md).")
  cfg = json.loads(str(fixture["cfg_json"]))
  state_dict = {k[3:]: v.astype(np.float32) for k, v in fixture.items() if k.startswith("sd/")}
  model_cfg = infer_model_config(state_dict)
  model = models.PixNerDiT(**model_cfg)
  params = state_dict_to_params(state_dict, models.param_shapes(model))
  for key, value in cfg.get("model", {}).items():
    if key in model_cfg and model_cfg[key] != value:
      print(f"warning: cfg_json says {key}={value}, the weights say {model_cfg[key]}")

  def velocity_of(m):
    return jax.jit(lambda x, t, y: m.apply({"params": params}, x, t, y))

  velocity = velocity_of(model)
  ok = True

  checked = 0

  def report(name, err, tol):
    nonlocal ok, checked
    checked += 1
    print(f"{name}: max abs error {err:.3e} (tolerance {tol:g})")
    ok = ok and err <= tol

  if "out" in fixture:
    out = velocity(_nhwc(fixture["x"]), fixture["t"].astype(np.float32),
                   _condition(fixture["y"]))
    report("forward", float(np.max(np.abs(np.asarray(out) - _nhwc(fixture["out"])))),
           forward_tol)
  if "heavy_out" in fixture:
    scale = tuple(float(s) for s in fixture["heavy_scale"])
    heavy = velocity_of(model.clone(decoder_patch_scaling=scale,
                                    decoder_coordinate_span=REFERENCE_HEAVY_DECODER_SPAN))
    out = heavy(_nhwc(fixture["heavy_x"]), fixture["heavy_t"].astype(np.float32),
                _condition(fixture["heavy_y"]))
    report(f"heavy-decoder forward (scale {scale})",
           float(np.max(np.abs(np.asarray(out) - _nhwc(fixture["heavy_out"])))), forward_tol)
  null_class = model_cfg.get("num_classes")
  for run in fixture_sampler_runs(fixture, cfg, null_class):
    s = run["settings"]
    result = jax.jit(lambda noise, cond, null, s=s: samplers.sample(
        velocity, noise, cond, null_class=null, **s))(run["noise"], run["cond"], run["null"])
    err = float(np.max(np.abs(np.asarray(result) - run["expected"])))
    report(f"{run['name']} sampler ({s['sampler']}, {s['num_steps']} steps, cfg "
           f"{s['guidance']})", err, sample_tol)
  if not checked:
    raise ConversionError(
        f"{path} holds weights but nothing to check them against (no out, heavy_out or "
        "sampler run); see ../shared/reference/fixtures/README.md for the formats.")
  print("PASS" if ok else "FAIL")
  return ok




