"""The FID sample command: balanced classes, chunks, resuming, both checkpoint kinds."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from configs import tiny
from pixnerd_jax.diffusion import samplers
from pixnerd_jax.training import checkpoint
from pixnerd_jax.sampling import class_conditional
from pixnerd_jax.sampling.trained_params import load_checkpoint
from pixnerd_jax.training import train
from pixnerd_jax.models import build_model, init_params
from tests import device_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_SAMPLES = 20  # 2 per class
_jit_init = jax.jit(init_params, static_argnums=0)


def _perturbed_params(model, seed):
  """Random params with the zero-initialised output layer perturbed too (non-trivial v)."""
  rng = np.random.default_rng(seed)
  params = _jit_init(model, jax.random.key(seed))
  return jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.05, p.shape).astype(np.float32),
                      params)


@pytest.fixture(scope="module")
def config():
  cfg = tiny.get_config()
  cfg.sampling.num_steps = 3
  return cfg


@pytest.fixture(scope="module")
def params_checkpoint(config, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
  model_config = {k: v for k, v in config.model.items() if k != "preset"}
  checkpoint.save_params(path, _perturbed_params(build_model(config.model), 0), model_config)
  return path


@pytest.fixture(scope="module")
def reference_run(config, params_checkpoint, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("samples"))
  path = class_conditional.run(config, params_checkpoint, out, num_samples=NUM_SAMPLES, batch_size=4,
                    chunk_size=8)
  with np.load(path) as data:
    return out, path, data["arr_0"], data["arr_1"]


def test_classes_are_balanced_as_the_reference():
  labels = class_conditional.class_labels(np.arange(50000), 50000, 1000)
  np.testing.assert_array_equal(labels, np.arange(50000) // 50)
  counts = np.bincount(class_conditional.class_labels(np.arange(25), 25, 10))
  assert counts.sum() == 25 and set(counts) == {2, 3}


def test_run_writes_balanced_uint8_samples_and_a_grid(reference_run):
  out, path, images, labels = reference_run
  assert os.path.basename(path) == "samples_20x16x16x3.npz"
  assert images.shape == (NUM_SAMPLES, 16, 16, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, np.arange(NUM_SAMPLES) // 2)
  assert len({images[i].tobytes() for i in range(NUM_SAMPLES)}) == NUM_SAMPLES
  assert os.path.exists(os.path.join(out, "grid.png"))
  # The chunks served resuming only: the final .npz is the one file of samples left.
  assert sorted(f for f in os.listdir(out) if f.endswith(".npz")) == [os.path.basename(path)]


def test_grid_has_a_labelled_row_for_every_class_up_to_the_row_limit(reference_run):
  np.testing.assert_array_equal(class_conditional.grid_classes(10), np.arange(10))
  spread = class_conditional.grid_classes(1000)
  assert len(spread) == class_conditional.GRID_ROWS and spread[0] == 0 and spread[-1] == 999
  grid = np.asarray(Image.open(os.path.join(reference_run[0], "grid.png")))
  # 10 rows of 16 px tiles with 2 px padding; 2 columns (2 samples per class here).
  assert grid.shape[0] == 2 + 10 * 18
  margin = grid.shape[1] - (2 + 2 * 18)
  assert margin > 0
  labels = grid[:, :margin]
  ink_rows = [(labels[2 + r * 18:(r + 1) * 18] < 128).any() for r in range(10)]
  assert all(ink_rows)  # each row's class number is written beside it


def test_results_do_not_depend_on_chunk_or_batch_size(config, params_checkpoint,
                                                      reference_run, tmp_path):
  # Same batch shape (one compile); the CLI test below varies the batch and device count.
  path = class_conditional.run(config, params_checkpoint, str(tmp_path), num_samples=NUM_SAMPLES,
                    batch_size=4, chunk_size=5, grid=False)
  with np.load(path) as data:
    np.testing.assert_array_equal(data["arr_0"], reference_run[2])


def test_scanned_trunk_samples_a_per_block_checkpoint_alike(config, params_checkpoint,
                                                           reference_run, tmp_path):
  scanned = tiny.get_config()
  scanned.sampling.num_steps = config.sampling.num_steps
  scanned.model.scan_blocks = True
  path = class_conditional.run(scanned, params_checkpoint, str(tmp_path), num_samples=NUM_SAMPLES,
                    batch_size=4, chunk_size=8, grid=False)
  with np.load(path) as data:
    diff = np.abs(data["arr_0"].astype(int) - reference_run[2].astype(int))
  assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


def test_resume_skips_complete_chunks(config, params_checkpoint, reference_run, tmp_path):
  out = str(tmp_path)
  kw = dict(num_samples=NUM_SAMPLES, batch_size=4, chunk_size=8)
  # The chunks of an interrupted run (run() removes them once the .npz is written).
  model, params, source = load_checkpoint(params_checkpoint, config)
  class_conditional.generate(
      out, model, params, samplers.settings_from_config(config.sampling),
      resolution=config.data.resolution, manifest_extra=dict(checkpoint=source), **kw)
  chunks = [os.path.join(out, f"samples_{c:05d}.npz") for c in range(3)]
  os.utime(chunks[0], (1, 1))          # mark the complete chunk
  os.remove(chunks[1])                 # missing
  with open(chunks[2], "r+b") as f:    # torn write
    f.truncate(100)
  rewritten = []
  generate = class_conditional.generate

  def spy(*args, **kwargs):
    paths = generate(*args, **kwargs)
    rewritten.extend(p for p in paths if os.path.getmtime(p) > 1)
    return paths

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(class_conditional, "generate", spy)
    path = class_conditional.run(config, params_checkpoint, out, grid=False, **kw)
  assert rewritten == chunks[1:]  # the complete chunk was kept, the others sampled again
  with np.load(path) as data:
    np.testing.assert_array_equal(data["arr_0"], reference_run[2])


def test_other_settings_in_the_same_directory_are_refused(config, params_checkpoint,
                                                          reference_run):
  with pytest.raises(ValueError, match="other settings"):
    class_conditional.run(config, params_checkpoint, reference_run[0], num_samples=NUM_SAMPLES,
               batch_size=4, chunk_size=8, seed=1)


def test_training_workdir_samples_ema_unless_online(config, tmp_path):
  model = build_model(config.model)
  state = train.create_train_state(_perturbed_params(model, 1), train.create_optimizer(config)[0])
  state = state.replace(ema_params=_perturbed_params(model, 2))
  workdir = str(tmp_path / "run")
  with checkpoint.create_manager(workdir, config) as manager:
    manager.save(6, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  _, ema, source = load_checkpoint(workdir, config)
  _, online, _ = load_checkpoint(workdir, config, online=True)
  assert "EMA params of step 6" in source
  leaf = lambda tree: np.asarray(tree["final_layer"]["linear"]["kernel"])
  np.testing.assert_array_equal(leaf(ema), leaf(state.ema_params))
  np.testing.assert_array_equal(leaf(online), leaf(state.params))
  runs = [class_conditional.run(config, workdir, str(tmp_path / name), num_samples=10, batch_size=4,
                     chunk_size=10, online=name == "online", grid=False)
          for name in ("ema", "online")]
  ema_images, online_images = (np.load(p)["arr_0"] for p in runs)
  assert ema_images.shape == (10, 16, 16, 3) and not np.array_equal(ema_images, online_images)


def test_online_flag_with_a_params_checkpoint_is_an_error(config, params_checkpoint):
  with pytest.raises(checkpoint.CheckpointError, match="training workdirs"):
    load_checkpoint(params_checkpoint, config, online=True)


def test_command_on_two_devices_with_other_batches_matches_and_a_fresh_process_reads_it(
    params_checkpoint, reference_run, tmp_path):
  out = str(tmp_path / "cli")
  env = device_env.with_cpu_devices(2, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "pixnerd_jax.sample", "--config=configs/tiny.py",
         "--config.sampling.num_steps=3", f"--checkpoint={params_checkpoint}",
         f"--num_samples={NUM_SAMPLES}", f"--out={out}", "--chunk_size=7", "--batch_size=6"]
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "ETA" in done.stderr
  # A console a person reads: a few short lines, no config dump or library notices.
  console = (done.stdout + done.stderr).splitlines()
  assert len(console) <= 15 and all(len(line) <= 200 for line in console), console
  for noise in ("oneDNN", "absl::InitializeLog", "Sampling with", "chunks of"):
    assert noise not in done.stderr, noise
  path = done.stdout.strip().splitlines()[-1]
  read = subprocess.run(
      [sys.executable, "-c", "import sys, numpy as np; d = np.load(sys.argv[1]); "
       "a, l = d['arr_0'], d['arr_1']; print(a.shape, a.dtype, np.bincount(l).tolist())", path],
      capture_output=True, text=True, timeout=60)
  assert read.stdout.strip() == "(20, 16, 16, 3) uint8 [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]"
  with np.load(path) as data:  # 2 devices x 3 per batch: as 1 device x 4 in-process
    np.testing.assert_array_equal(data["arr_0"], reference_run[2])


_FSDP_WORKER = """
import sys
import jax
from configs import tiny
from pixnerd_jax.sampling import class_conditional, trained_params
config = tiny.get_config()
config.sampling.num_steps = 3
config.mesh.data, config.mesh.fsdp = 1, -1
mesh = trained_params.sampling_mesh(config)
_, params, _ = trained_params.load_checkpoint(sys.argv[1], config, mesh=mesh)
leaves = jax.tree.leaves(params)
print("split", sum(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
                   for x in leaves), "of", len(leaves))
kernel = params["blocks_0"]["attn"]["qkv"]["kernel"]
print("qkv", kernel.shape, kernel.addressable_shards[0].data.shape)
print(class_conditional.run(config, sys.argv[1], sys.argv[2], num_samples=20, batch_size=4,
                            chunk_size=8))
"""


def test_an_fsdp_sampling_mesh_shards_the_params_and_samples_as_one_device(
    params_checkpoint, reference_run, tmp_path):
  """config.mesh.fsdp=-1 on 2 devices: the restored params are split over both by the
  training's rules (no device holds the whole model), and the images are those of the
  single-device run."""
  env = device_env.with_cpu_devices(2, JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-c", _FSDP_WORKER, params_checkpoint,
                         str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.strip().splitlines()
  split, _, total = lines[0].split()[1:]
  assert int(split) >= int(total) // 2, lines[0]  # every kernel with an 'embed' axis
  qkv = re.fullmatch(r"qkv \((\d+), (\d+)\) \((\d+), (\d+)\)", lines[1]).groups()
  assert int(qkv[2]) == int(qkv[0]) // 2 and qkv[1] == qkv[3], lines[1]  # embed halved
  with np.load(lines[-1]) as data:
    diff = np.abs(data["arr_0"].astype(int) - reference_run[2].astype(int))
  assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


def test_grid_of_fewer_samples_than_classes(tmp_path):
  """--num_samples 3 of a 10-class model: a 3-row grid of the sampled classes (it
  crashed after writing the .npz)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images = np.stack([np.full((4, 4, 3), 50 * i, np.uint8) for i in range(3)])
  np.savez(tmp_path / "chunk.npz", images=images)
  png, classes = class_conditional.write_grid([str(tmp_path / "chunk.npz")], [(0, 3)], 3, 10,
                                              str(tmp_path / "grid.png"))
  np.testing.assert_array_equal(classes, [0, 3, 6])  # sample i has class (10 i) // 3
  grid = np.asarray(Image.open(png))
  assert grid.shape[0] == 3 * (4 + 2) + 2, grid.shape  # 3 rows of one 4 px tile each
  tile_x = grid.shape[1] - 2 - 4  # one column, right of the labels' margin
  assert [grid[2 + r * 6, tile_x, 0] for r in range(3)] == [0, 50, 100]
