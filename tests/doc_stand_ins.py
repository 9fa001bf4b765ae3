"""Tiny stand-ins for what the documented commands read (see tests/test_docs.py).

Each maker writes one file or folder at `path` with the layout the real one has (an
official Lightning checkpoint, torch-hub DINOv2 weights, pytorch-fid's Inception weights,
a prepared TFDS imagenet2012, an ImageNet-style image folder, a training workdir, ...)
and the smallest content that exercises the command. Makers return False when the
stand-in cannot be made here (e.g. the reference fixtures are absent).
"""

import io
import json
import pathlib
import re
import shutil

import jax
import numpy as np
from PIL import Image

from tests import conftest

# The architecture of the stand-in official checkpoint: patch 16 like XL/16, 1000 classes
# like ImageNet, and 8 DiT blocks so that REPA's align_layer=8 exists; everything else tiny.
OFFICIAL_STAND_IN = dict(in_channels=3, patch_size=16, hidden_size=32, num_groups=2,
                         hidden_size_x=8, nerf_mlpratio=2, num_blocks=9, num_cond_blocks=8,
                         num_classes=1000, max_freqs=8)
# A text-to-image stand-in official checkpoint (tiny, but reading 128 text tokens as the
# released XXL/16 does, so the documented Qwen3 max_length of 128 applies to it).
OFFICIAL_T2I_STAND_IN = dict(in_channels=3, patch_size=16, num_groups=2, hidden_size=32,
                             hidden_size_x=8, nerf_mlpratio=2, num_blocks=3, num_cond_blocks=2,
                             max_freqs=8, conditioning="text", txt_embed_dim=32,
                             txt_max_length=128, num_text_blocks=1)
DATASET_SIZE = 256  # the ImageNet configs' global batch: a dataset needs one batch at least
T2I_DATASET_SIZE = 768  # configs/t2i_pretrain256.py's global batch


def _torch():
  import torch  # pylint: disable=g-import-not-at-top
  return torch


def _torch_key(path: tuple[str, ...]) -> str:
  """A Flax param path -> the reference's key (the inverse of convert.flax_path)."""
  names = [re.sub(r"_(\d+)$", r".\1", name) for name in path[:-1]]
  leaf = path[-1]
  if leaf == "embedding_table":
    return ".".join(path[:-1] + ("embedding_table", "weight"))
  return ".".join(names + ["weight" if leaf == "kernel" else leaf])


def official_checkpoint(path: pathlib.Path, architecture: dict = OFFICIAL_STAND_IN) -> bool:
  """A Lightning .ckpt as the released ones: ema_denoiser.* and denoiser.* state_dicts."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from pixnerd_jax import models  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.conversion import pixnerd_weights as convert  # pylint: disable=g-import-not-at-top
  torch = _torch()
  shapes = models.param_shapes(models.build_model(architecture))
  rng = np.random.default_rng(0)
  state_dict = {}
  for key, shape in traverse_util.flatten_dict(shapes).items():
    value = rng.normal(0, 0.02, shape.shape).astype(np.float32)
    state_dict[_torch_key(key)] = value.T if key[-1] == "kernel" else value
  # The converter must read it back as this architecture, or the stand-in is wrong.
  model_cfg, _ = convert.convert_state_dict(state_dict)
  assert model_cfg == architecture, model_cfg
  tensors = {}
  for prefix, scale in (("ema_denoiser.", 1.0), ("denoiser.", 2.0)):
    tensors.update({prefix + k: torch.from_numpy(v * scale) for k, v in state_dict.items()})
  path.parent.mkdir(parents=True, exist_ok=True)
  torch.save({"state_dict": tensors, "global_step": 1_600_000}, path)
  return True


def official_t2i_checkpoint(path: pathlib.Path) -> bool:
  """A text-to-image Lightning .ckpt (the released XXL/16's layout, tiny sizes)."""
  return official_checkpoint(path, OFFICIAL_T2I_STAND_IN)


def text_encoder_folder(path: pathlib.Path) -> bool:
  """A Hugging Face Qwen3 folder (config.json, safetensors, tokenizer.json) as
  `huggingface-cli download Qwen/Qwen3-1.7B` gives, with Qwen3-1.7B's width (2048, what
  XXL/16 reads) but one layer, random weights and a small word-level vocabulary."""
  from pixnerd_jax.embedded import stand_in_text_encoder  # pylint: disable=g-import-not-at-top
  words = "a photo of cat dog red car sea bowl fruit table mountain lake sunrise".split()
  stand_in_text_encoder.create_stand_in(str(path), words, hidden_size=2048, num_layers=1,
                               max_length=128, seed=0)
  return True


def caption_tar_shards(path: pathlib.Path) -> bool:
  """Webdataset shards (key.jpg + key.txt) in `path`, T2I_DATASET_SIZE examples."""
  import tarfile  # pylint: disable=g-import-not-at-top
  path.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(6)
  per_shard = T2I_DATASET_SIZE // 2
  for shard in range(2):
    with tarfile.open(path / f"shard-{shard:05d}.tar", "w") as tar:
      for i in range(per_shard):
        key = f"{shard * per_shard + i:08d}"
        encoded = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), np.uint8)).save(encoded, "JPEG")
        caption = f"a photo of a red car number {i}".encode()
        for name, payload in ((f"{key}.jpg", encoded.getvalue()), (f"{key}.txt", caption)):
          info = tarfile.TarInfo(name)
          info.size = len(payload)
          tar.addfile(info, io.BytesIO(payload))
  return True


def reference_fixture(path: pathlib.Path) -> bool:
  """A verification fixture: the official code's outputs (../shared), when present."""
  fixtures = [f for f in conftest.fixture_files() if f.name == "pixnerd_c2i_tiny.npz"]
  if not fixtures:
    return False
  shutil.copyfile(fixtures[0], path)
  return True


def dinov2_hub_weights(path: pathlib.Path) -> bool:
  """A torch-hub-layout DINOv2 (dinov2_vitb14_pretrain.pth keys) with width 64, 1 block."""
  torch = _torch()
  rng = np.random.default_rng(0)
  d, patch, grid = 64, 14, 4
  shapes = {"cls_token": (1, 1, d), "mask_token": (1, d), "pos_embed": (1, 1 + grid**2, d),
            "patch_embed.proj.weight": (d, 3, patch, patch), "patch_embed.proj.bias": (d,),
            "norm.weight": (d,), "norm.bias": (d,)}
  for name, shape in (("norm1.weight", (d,)), ("norm1.bias", (d,)),
                      ("attn.qkv.weight", (3 * d, d)), ("attn.qkv.bias", (3 * d,)),
                      ("attn.proj.weight", (d, d)), ("attn.proj.bias", (d,)),
                      ("ls1.gamma", (d,)), ("norm2.weight", (d,)), ("norm2.bias", (d,)),
                      ("mlp.fc1.weight", (4 * d, d)), ("mlp.fc1.bias", (4 * d,)),
                      ("mlp.fc2.weight", (d, 4 * d)), ("mlp.fc2.bias", (d,)),
                      ("ls2.gamma", (d,))):
    shapes[f"blocks.0.{name}"] = shape
  state_dict = {k: torch.from_numpy(rng.normal(0, 0.02, s).astype(np.float32))
                for k, s in shapes.items()}
  torch.save(state_dict, path)
  return True


def inception_weights(path: pathlib.Path) -> bool:
  """pytorch-fid's FID Inception state_dict (its key names and shapes), random values."""
  from pixnerd_jax.evaluation import inception  # pylint: disable=g-import-not-at-top
  torch = _torch()
  leaves = {"conv/kernel": "conv.weight", "bn/scale": "bn.weight", "bn/bias": "bn.bias",
            "bn/mean": "bn.running_mean", "bn/var": "bn.running_var",
            "fc/kernel": "fc.weight", "fc/bias": "fc.bias"}
  flat = {}
  for name, value in _flatten(inception.random_variables(0)).items():
    _, *modules, module, leaf = name.split("/")
    key = ".".join(modules + [leaves[f"{module}/{leaf}"]])
    if leaf == "kernel":
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    flat[key] = torch.from_numpy(np.ascontiguousarray(value))
  torch.save(flat, path)
  return True


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = np.asarray(value)
  return out


def reference_statistics(path: pathlib.Path) -> bool:
  """An ADM reference batch as published (VIRTUAL_*.npz): images arr_0 (here 4), mu/sigma
  of the 2048 pool features and mu_s/sigma_s of the 2023 spatial ones."""
  rng = np.random.default_rng(1)
  np.savez(path, arr_0=rng.integers(0, 256, (4, 64, 64, 3), np.uint8),
           mu=rng.normal(0, 0.1, 2048), sigma=np.eye(2048),
           mu_s=rng.normal(0, 0.1, 2023), sigma_s=np.eye(2023))
  return True


def sample_npz(path: pathlib.Path) -> bool:
  """A sample .npz as `sample` assembles it (arr_0 uint8 NHWC, arr_1 labels), 4 images."""
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(2)
  np.savez(path, arr_0=rng.integers(0, 256, (4, 256, 256, 3), np.uint8),
           arr_1=np.arange(4, dtype=np.int64))
  return True


def digits_workdir(path: pathlib.Path) -> bool:
  """A training workdir of configs/digits.py with one checkpoint (step 1, fresh params)."""
  from configs import digits  # pylint: disable=g-import-not-at-top
  return _checkpoint_at_step_1(path, digits.get_config(), seed=5)


def digits_meanflow_workdir(path: pathlib.Path) -> bool:
  """A training workdir of configs/digits_meanflow.py (step 1, random params)."""
  from configs import digits_meanflow  # pylint: disable=g-import-not-at-top
  return _checkpoint_at_step_1(path, digits_meanflow.get_config(), seed=6)


def _checkpoint_at_step_1(path: pathlib.Path, config, seed: int, tokenizer=None) -> bool:
  """Writes a checkpoint of step 1 with random params to the workdir `path`."""
  from pixnerd_jax import data, models  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.training import train  # pylint: disable=g-import-not-at-top
  tx, _ = train.create_optimizer(config)
  rng = np.random.default_rng(seed)
  # Random params of the right shapes: a real init runs op by op and takes ~20 s on CPU.
  params = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32),
                        models.param_shapes(train.create_model(config)))
  state = train.create_train_state(params, tx)
  iterator = data.create_train_iterator(config.data, global_batch_size=config.batch_size,
                                        seed=config.seed, tokenizer=tokenizer)
  manager = checkpoint.create_manager(str(path), config)
  checkpoint.save(manager, 1, state.replace(step=state.step + 1), iterator)
  manager.wait_until_finished()
  manager.close()
  return True


def digits_t2i_workdir(path: pathlib.Path) -> bool:
  """A training workdir of configs/digits_t2i.py with one checkpoint (step 1, random
  params) and the stand-in text encoder that training writes to <workdir>/text_encoder."""
  from configs import digits_t2i  # pylint: disable=g-import-not-at-top
  from pixnerd_jax import data  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.embedded import stand_in_text_encoder  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.models import text_encoder  # pylint: disable=g-import-not-at-top
  config = digits_t2i.get_config()
  te = config.text_encoder
  stand_in_text_encoder.create_stand_in(str(path / text_encoder.STAND_IN_DIR),
                               data.caption_vocabulary(config.data),
                               hidden_size=config.model.txt_embed_dim,
                               num_layers=te.stand_in_layers, max_length=te.max_length, seed=0,
                               init_std=te.stand_in_init_std)
  encoder, _ = text_encoder.load_for_run(te, config.model.txt_embed_dim, str(path))
  return _checkpoint_at_step_1(path, config, seed=7, tokenizer=encoder)


def prompt_file(path: pathlib.Path) -> bool:
  """A --prompts file: one prompt a line."""
  path.write_text("a photo of a cat\n\na red car parked by the sea\n")
  return True


def geneval_metadata(path: pathlib.Path) -> bool:
  """GenEval's evaluation_metadata.jsonl: one JSON object with a "prompt" a line."""
  rows = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}],
           "prompt": "a photo of a cat"},
          {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"}],
           "prompt": "a photo of a red car"}]
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))
  return True


def dpg_prompt_folder(path: pathlib.Path) -> bool:
  """DPG-Bench's dpg_bench/prompts/: <name>.txt, one prompt each."""
  path.mkdir(parents=True, exist_ok=True)
  for name, prompt in (("cat", "a photo of a cat"), ("car", "a red car by the sea")):
    (path / f"{name}.txt").write_text(prompt + "\n")
  return True


def image_folder(path: pathlib.Path) -> bool:
  """An ImageNet-style train folder: <wnid>/*.JPEG, 4 classes, DATASET_SIZE images."""
  rng = np.random.default_rng(3)
  for i in range(DATASET_SIZE):
    folder = path / f"n0000000{i % 4}"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), np.uint8)).save(
        folder / f"img_{i:04d}.JPEG", format="JPEG")
  return True


def tfds_imagenet(path: pathlib.Path) -> bool:
  """A TFDS data_dir with imagenet2012 prepared as ArrayRecord (DATASET_SIZE images).

  Built by the real imagenet2012 builder with its split generator replaced (it would read
  the 150 GB tars), so `tfds.builder("imagenet2012", data_dir=path)` finds it prepared.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.datasets.imagenet2012 import (  # pylint: disable=g-import-not-at-top
      imagenet2012_dataset_builder as imagenet)

  with tfds.core.registered.skip_registration():

    class TinyImagenet(imagenet.Builder):  # pylint: disable=unused-variable
      name = "imagenet2012"
      code_path = None  # no checksums file to look for beside this module


      def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._tiny_examples()}

      def _tiny_examples(self):
        rng = np.random.default_rng(4)
        for i in range(DATASET_SIZE):
          encoded = io.BytesIO()
          Image.fromarray(rng.integers(0, 256, (12, 10, 3), np.uint8)).save(encoded, "JPEG")
          yield i, {"image": io.BytesIO(encoded.getvalue()), "label": (7 * i) % 1000,
                    "file_name": f"n{i:08d}_0.JPEG"}

    TinyImagenet(data_dir=str(path), file_format="array_record").download_and_prepare()
  return True
