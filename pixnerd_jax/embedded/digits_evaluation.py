"""How the trainer evaluates the embedded digits jobs: the digits judge reads which digit
each EMA sample shows, for class labels or for captions held out of training."""

import numpy as np

from pixnerd_jax.data import digits_captions

# The data sources of the embedded jobs this evaluation understands.
SOURCES = ("digits", "digits_captions")


class DigitsEvaluation:
  """Conditions with the digits they ask for, and the judge's metrics on the samples.

  Class models ask for labels 0..9 in turn; text models for captions from templates held
  out of training (any 10 consecutive prompts cover every digit), so the digit must come
  from the text.
  """

  name = "digits"

  def __init__(self, config):
    self._text = config.model.get("conditioning", "class") == "text"
    self._resolution = int(config.data.resolution)
    self._judge = None

  def grid_prompts(self, rows: int) -> list[str]:
    """Captions for a grid of `rows` rows (text models only)."""
    return digits_captions.evaluation_captions(rows)[0]

  def conditions(self, num_samples: int, num_classes: int):
    """(N labels or N captions, (N,) int32 digits they ask for)."""
    if self._text:
      return digits_captions.evaluation_captions(num_samples)
    labels = np.arange(num_samples) % num_classes
    return labels, labels

  def metrics(self, samples: np.ndarray, labels: np.ndarray) -> dict:
    """samples: (N, H, W, C) float in model range; labels: (N,) the intended digits."""
    if self._judge is None:
      from pixnerd_jax.embedded.digits_judge import DigitsJudge  # pylint: disable=import-outside-toplevel
      self._judge = DigitsJudge(resolution=self._resolution)
    return self._judge.metrics(samples, labels)


def evaluation_for(config) -> DigitsEvaluation | None:
  """The embedded job's evaluation when config trains on one of its sources, else None."""
  return DigitsEvaluation(config) if config.data.name in SOURCES else None
