"""Processes' local batches, concatenated in process order, equal the one-process batch."""

import numpy as np

from tests import data_test_utils
from pixnerd_jax import data


def test_process_batches_assemble_the_single_process_batch():
  config = data_test_utils.make_config(name="digits", resolution=8)
  single = data.create_train_iterator(config, global_batch_size=12, seed=3, process_index=0,
                                      process_count=1)
  parts = [data.create_train_iterator(config, global_batch_size=12, seed=3, process_index=i,
                                      process_count=3) for i in range(3)]
  for _ in range(4):
    whole = next(single)
    pieces = [next(p) for p in parts]
    for key in ("image", "label"):
      np.testing.assert_array_equal(whole[key], np.concatenate([p[key] for p in pieces]))
