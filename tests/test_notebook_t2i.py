"""notebooks/text_to_image.ipynb runs headless on a tiny t2i checkpoint made here, at a
non-square upscaled size (the heavy decoder)."""

import base64
import io
import os

import numpy as np
import pytest
from PIL import Image

from configs import tiny_t2i
from test_notebook import _inject_parameters
from test_sample_t2i import make_tiny_t2i_checkpoint

nbclient = pytest.importorskip("nbclient", reason="nbclient + ipykernel run the notebook")
nbformat = pytest.importorskip("nbformat")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "text_to_image.ipynb")


def test_notebook_samples_prompts_at_a_chosen_size_and_shows_the_trajectory(tmp_path,
                                                                            monkeypatch):
  ckpt = make_tiny_t2i_checkpoint(str(tmp_path / "tiny_t2i"), tiny_t2i.get_config())
  nb = nbformat.read(NOTEBOOK, as_version=4)
  _inject_parameters(nb, CHECKPOINT=ckpt, CONFIG=os.path.join(ROOT, "configs", "tiny_t2i.py"),
                     PROMPTS=["a red cat on a sofa", "two green birds"], SAMPLES_PER_PROMPT=3,
                     HEIGHT=16, WIDTH=24, GUIDANCE=3.0, NUM_STEPS=4, SAMPLER="adamlm",
                     TIMESHIFT=3.0, TRAJECTORY_FRAMES=3)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}
                          ).execute()

  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs)
  assert "params checkpoint" in text and "sampling 16x24 (heavy decoder" in text
  assert "'sampler': 'adamlm'" in text and "'guidance': 3.0" in text
  assert "row 1: two green birds" in text
  pngs = [Image.open(io.BytesIO(base64.b64decode(o.data["image/png"])))
          for o in outputs if "image/png" in o.get("data", {})]
  assert len(pngs) == 2
  grid, trajectory = (np.asarray(p) for p in pngs)
  # 2 prompts x 3 samples of 16x24 with 2 px padding, enlarged by an integer factor.
  scale = grid.shape[0] // (2 * 18 + 2)
  assert grid.shape[:2] == ((2 * 18 + 2) * scale, (3 * 26 + 2) * scale)
  assert grid.std() > 0
  # 2 rows (states, guesses) per prompt; 3 frames and the final image per row.
  scale = trajectory.shape[0] // (4 * 18 + 2)
  assert trajectory.shape[:2] == ((4 * 18 + 2) * scale, (4 * 26 + 2) * scale)
