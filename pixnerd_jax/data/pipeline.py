"""The training input pipeline: one Grain graph for every source.

    range(N) -> shuffle(seed) -> repeat() -> map_with_index(load + flip)
      -> [process_index::process_count]               (this host's shard)
      -> to_iter_dataset(threads)                     (parallel decoding)
      -> FullBatchIterDataset(local_batch)            (drop + count failures)
      -> mp_prefetch(num_workers)                     (if num_workers > 0)
      -> map(to_model_inputs)                         ([0,1] and [-1,1])

Shuffling is global (every host shuffles the same index stream with the same
seed) and each host keeps every process_count-th position, so hosts read
disjoint examples and each epoch is reshuffled (Grain reseeds the shuffle per
epoch). Everything is a deterministic function of the seed, the positions
consumed and num_workers, which is what makes the iterator state tiny and
checkpointable.
"""

from typing import Optional

from absl import flags
import grain
import jax
import ml_collections

from pixnerd_jax.data import batching
from pixnerd_jax.data import sharding as data_sharding
from pixnerd_jax.data import digits
from pixnerd_jax.data import folder
from pixnerd_jax.data import loading
from pixnerd_jax.data import tfds_source

SOURCE_NAMES = ('digits', 'tfds', 'folder')


def make_source(data_config: ml_collections.ConfigDict) -> loading.Source:
  """Builds the random-access source named by `data_config.name`."""
  resolution = int(data_config.resolution)
  if resolution <= 0:
    raise ValueError(
        f'config.data.resolution must be positive, got {resolution}.')
  name = data_config.name
  if name == 'digits':
    return digits.DigitsSource(resolution)
  if name == 'folder':
    if not data_config.get('folder'):
      raise ValueError("config.data.name='folder' needs config.data.folder, "
                       'the root of root/<class>/<image files>.')
    return folder.FolderSource(data_config.folder, resolution)
  if name == 'tfds':
    return tfds_source.TfdsSource(
        data_config.tfds_name, data_config.get('split', 'train'),
        data_config.get('data_dir') or None, resolution)  # '' = unset
  raise ValueError(
      f'config.data.name={name!r} is not one of {SOURCE_NAMES}.')


def create_train_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: Optional[int] = None,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
) -> grain.DatasetIterator:
  """Creates this process's infinite, checkpointable training iterator.

  Args:
    data_config: the `config.data` block (see `pixnerd_jax.data.config`).
    global_batch_size: batch size summed over all processes.
    seed: shuffle / flip seed in [0, 2**32); defaults to `data_config.seed`.
    process_index: this host's index; defaults to `jax.process_index()`.
    process_count: number of hosts; defaults to `jax.process_count()`.

  Returns:
    A Grain iterator yielding dicts of numpy arrays with
    local_batch = global_batch_size // process_count:
      `image`: float32 (local_batch, S, S, 3) in [-1, 1].
      `raw_image`: float32 (local_batch, S, S, 3) in [0, 1].
      `label`: int32 (local_batch,).
      `num_skipped`: int32 (), unreadable examples dropped while assembling
        this batch (sum it over batches and hosts for a running total).
    It has `get_state()` / `set_state()`; see `iterator_checkpoint_args` for
    saving it with Orbax. The batches depend on (seed, num_workers, process
    layout): restore with the same three.

  Raises:
    ValueError: bad config, indivisible batch, or fewer examples than one
      global batch. FileNotFoundError: missing folder / unprepared TFDS data.
  """
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if seed is None:
    seed = data_config.get('seed', 0)
  seed = int(seed)
  if not 0 <= seed < 2**32:
    raise ValueError(f'The data seed must be in [0, 2**32), got {seed}.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in '
                     f'[0, process_count={process_count}).')
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
        f'global_batch_size={global_batch_size} must be a positive multiple '
        f'of the number of processes ({process_count}).')
  local_batch_size = global_batch_size // process_count

  source = make_source(data_config)
  if len(source) < global_batch_size:
    raise ValueError(
        f'The {data_config.name!r} dataset has {len(source)} examples, fewer '
        f'than one global batch ({global_batch_size}). Add data or lower the '
        'batch size.')

  ds = grain.MapDataset.range(len(source))
  if data_config.get('shuffle', True):
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat()  # Infinite; a shuffled parent is reshuffled every epoch.
  ds = ds.map_with_index(loading.LoadExample(
      source, random_flip=bool(data_config.get('random_flip', False)),
      seed=seed))
  ds = data_sharding.ProcessBlockShard(
      ds, local_batch_size=local_batch_size, process_index=process_index,
      process_count=process_count)

  num_threads = int(data_config.get('num_threads', 8))
  # config.prefetch_buffer_size counts batches: the decoding threads run that
  # many local batches of examples ahead, and each worker keeps that many
  # finished batches.
  prefetch_batches = max(1, int(data_config.get('prefetch_buffer_size', 2)))
  # allow_nones: failed examples must reach the batcher to be counted.
  it_ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads,
                        prefetch_buffer_size=prefetch_batches *
                        local_batch_size),
      allow_nones=True)
  it_ds = batching.FullBatchIterDataset(
      it_ds, batch_size=local_batch_size,
      max_consecutive_skips=len(source))

  num_workers = int(data_config.get('num_workers', 0))
  if num_workers > 0:
    # Grain's worker processes read absl flags; outside an absl.app program
    # (tests, notebooks, scripts) they are unparsed, so use their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    # Each worker assembles whole batches from every num_workers-th example of
    # this host's shard; batches come back round-robin, deterministically.
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=prefetch_batches))
  # Float conversion after the workers: they ship uint8 pixels, 8x fewer
  # bytes through shared memory than the two float32 outputs. It runs in
  # `next()` on the training thread, overlapping the asynchronously
  # dispatched train step.
  it_ds = it_ds.map(loading.to_model_inputs)
  return iter(it_ds)
