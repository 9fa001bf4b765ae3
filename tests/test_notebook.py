"""notebooks/sampling.ipynb runs headless on a tiny checkpoint made here."""

import base64
import io
import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from pixnerd_jax.training import checkpoint
from pixnerd_jax.models import build_model, init_params

nbclient = pytest.importorskip("nbclient", reason="nbclient + ipykernel run the notebook")
nbformat = pytest.importorskip("nbformat")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "sampling.ipynb")


def _inject_parameters(nb, **values):
  """Papermill-style: a cell after the one tagged `parameters` overrides its values."""
  index = next(i for i, cell in enumerate(nb.cells)
               if "parameters" in cell.metadata.get("tags", []))
  cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items()))
  cell.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(index + 1, cell)


def test_notebook_samples_and_shows_a_grid_and_a_trajectory(tmp_path, monkeypatch):
  config = tiny.get_config()
  model = build_model(config.model)
  params = jax.jit(init_params, static_argnums=0)(model, jax.random.key(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.05, p.shape).astype(np.float32),
                        params)
  ckpt = str(tmp_path / "tiny")
  checkpoint.save_params(ckpt, params, {k: v for k, v in config.model.items() if k != "preset"})

  nb = nbformat.read(NOTEBOOK, as_version=4)
  _inject_parameters(nb, CHECKPOINT=ckpt, CONFIG=os.path.join(ROOT, "configs", "tiny.py"),
                     CLASSES=[0, 3, 7], SAMPLES_PER_CLASS=2, SAMPLER="heun",
                     TRAJECTORY_FRAMES=3)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}
                          ).execute()

  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs)
  assert "params checkpoint" in text and "'sampler': 'heun'" in text
  # What is not set comes from the config's sampling block, as the sample command's.
  assert f"'num_steps': {config.sampling.num_steps}," in text
  assert f"'guidance': {config.sampling.guidance}," in text
  pngs = [Image.open(io.BytesIO(base64.b64decode(o.data["image/png"])))
          for o in outputs if "image/png" in o.get("data", {})]
  assert len(pngs) == 2
  grid, trajectory = (np.asarray(p) for p in pngs)
  # 3 classes x 2 samples of 16 px with 2 px padding, enlarged by an integer factor.
  scale = grid.shape[0] // (3 * 18 + 2)
  assert grid.shape[:2] == ((3 * 18 + 2) * scale, (2 * 18 + 2) * scale)
  assert trajectory.shape[0] // (6 * 18 + 2) >= 1  # 2 rows (states, guesses) per class
  assert grid.std() > 0
