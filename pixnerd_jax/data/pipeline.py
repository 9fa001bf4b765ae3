"""The training input pipeline: one Grain graph for every source.

    range(N) -> shuffle(seed) -> repeat() -> map_with_index(load + flip)
      -> ProcessBlockShard                            (this host's rows)
      -> to_iter_dataset(threads)                     (parallel decoding)
      -> FullBatchIterDataset(local_batch)            (drop + count failures)
      -> mp_prefetch(num_workers)                     (if num_workers > 0)
      -> map(to_model_inputs)                         ([0,1] and [-1,1])
      -> map(TokenizeCaptions)                        (captioned sources)

Shuffling is global (every host shuffles the same index stream with the same
seed) and each host keeps its block of rows of every global batch, so hosts
read disjoint examples and each epoch is reshuffled (Grain reseeds the shuffle
per epoch). Captioned sources follow the same graph; their caption strings
travel through the workers and are tokenized last, on this thread. Everything is a deterministic function of the seed, the positions
consumed and num_workers, which is what makes the iterator state tiny and
checkpointable.
"""

from typing import Optional, Union

from absl import flags
import grain
import jax
import ml_collections
import numpy as np

from pixnerd_jax.data import batching
from pixnerd_jax.data import caption_folder
from pixnerd_jax.data import caption_tar
from pixnerd_jax.data import captions
from pixnerd_jax.data import digits
from pixnerd_jax.data import digits_captions
from pixnerd_jax.data import folder
from pixnerd_jax.data import global_batch
from pixnerd_jax.data import loading
from pixnerd_jax.data import sharding as data_sharding
from pixnerd_jax.data import synthetic
from pixnerd_jax.data import tfds_source
from pixnerd_jax.data.errors import DataError

CLASS_SOURCE_NAMES = ('digits', 'tfds', 'folder')
CAPTION_SOURCE_NAMES = ('digits_captions', 'caption_folder', 'caption_tar',
                        'tfds_captions')
# Made on the accelerators (data/synthetic.py): labels, or captions given a tokenizer.
SYNTHETIC = 'synthetic'
SOURCE_NAMES = CLASS_SOURCE_NAMES + CAPTION_SOURCE_NAMES + (SYNTHETIC,)


def is_captioned(data_config: ml_collections.ConfigDict) -> bool:
  """Whether `data_config.name` is a captioned (text-to-image) source ('synthetic' is
  either: see create_train_iterator)."""
  if data_config.name not in SOURCE_NAMES:
    raise ValueError(
        f'config.data.name={data_config.name!r} is not one of {SOURCE_NAMES}.')
  return data_config.name in CAPTION_SOURCE_NAMES


def batch_keys(data_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The batch fields to pass to `make_global_batch(..., keys=...)`."""
  if not is_captioned(data_config):
    return global_batch.BATCH_KEYS
  if data_config.name == 'digits_captions':
    return global_batch.CAPTION_BATCH_KEYS + ('label',)
  return global_batch.CAPTION_BATCH_KEYS


def caption_vocabulary(data_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Every word the captions of `data_config` can hold, for the word-level
  tokenizer of a stand-in text encoder; only a templated source has one."""
  if data_config.name == SYNTHETIC:
    return synthetic.caption_vocabulary()
  if data_config.name != 'digits_captions':
    raise ValueError(
        f'config.data.name={data_config.name!r} has no closed caption vocabulary, '
        'so it cannot train with a stand-in text encoder: set '
        '--config.text_encoder.path to a Hugging Face Qwen3 folder.')
  return digits_captions.caption_vocabulary()


def make_source(
    data_config: ml_collections.ConfigDict
) -> Union[loading.Source, loading.CaptionSource]:
  """Builds the random-access source named by `data_config.name`."""
  resolution = int(data_config.resolution)
  if resolution <= 0:
    raise ValueError(
        f'config.data.resolution must be positive, got {resolution}.')
  name = data_config.name
  if name == 'digits_captions':
    return digits_captions.DigitsCaptionSource(resolution)
  if name == 'caption_folder':
    if not data_config.get('folder'):
      raise ValueError(
          "config.data.name='caption_folder' needs config.data.folder, a "
          'folder tree of images with sidecar captions (x.jpg + x.txt).')
    return caption_folder.CaptionFolderSource(data_config.folder, resolution)
  if name == 'caption_tar':
    return caption_tar.CaptionTarSource(
        data_config.get('tar_shards', ''), resolution,
        caption_field=data_config.get('caption_field', 'caption'),
        cache_dir=data_config.get('index_cache_dir') or None)
  if name == 'tfds_captions':
    return tfds_source.TfdsCaptionSource(
        data_config.tfds_name, data_config.get('split', 'train'),
        data_config.get('data_dir'), resolution,
        image_feature=data_config.get('image_feature', 'image'),
        text_feature=data_config.get('text_feature', 'caption'))
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


# More consecutive unreadable examples than this stop the run with one error:
# a working dataset with scattered bad files never comes close.
MAX_CONSECUTIVE_SKIPS = 100


def _gather_from_processes(values: np.ndarray) -> np.ndarray:
  """(P, ...) the `values` of every process (a collective: all must call it)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(values))


def check_hosts_agree(source, data_config) -> None:
  """DataError on every process unless all see the same source (length and class
  count): a shard readable on one host only would give hosts different shuffles
  and batch splits, silently."""
  seen = np.asarray([len(source), getattr(source, 'num_classes', None) or -1],
                    np.int64)
  every = _gather_from_processes(seen)
  if (every != every[0]).any():
    views = ', '.join(f'process {i}: {int(n)} examples'
                      for i, (n, _) in enumerate(every))
    raise DataError(
        f'The hosts see different {data_config.name!r} data ({views}; class '
        f'counts {sorted(set(int(c) for c in every[:, 1]))}): a file or shard '
        'is missing or unreadable on some of them (see their warnings). Make '
        'the same data readable on every host.')


def check_labels_fit(source, data_config, num_classes: int) -> None:
  """DataError when `source` has labels the model has no class for.

  A label >= num_classes would index past the class table (NaN) or, equal to
  num_classes, silently train as the unconditional (null) class. Sources that
  do not know their class count (some TFDS datasets) are not checked here.
  """
  count = getattr(source, 'num_classes', None)
  if count is None or count <= num_classes:
    return
  names = getattr(source, 'class_names', None)
  first = f' ({names[num_classes]!r})' if names else ''
  raise DataError(
      f'config.data.name={data_config.name!r} has {count} classes (labels '
      f'0..{count - 1}), config.model.num_classes={num_classes}: label '
      f'{num_classes}{first} and above have no class in the model. Set '
      f'--config.model.num_classes={count}, or train on {num_classes} classes.')


def create_train_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: Optional[int] = None,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
    tokenizer: Optional[captions.Tokenizer] = None,
    sharding: Optional[jax.sharding.Sharding] = None,
    num_classes: Optional[int] = None,
) -> grain.DatasetIterator:
  """Creates this process's infinite, checkpointable training iterator.

  Args:
    data_config: the `config.data` block (configs/default.py).
    global_batch_size: batch size summed over all processes.
    seed: shuffle / flip / caption seed in [0, 2**32); defaults to
      `data_config.seed`.
    process_index: this host's index; defaults to `jax.process_index()`.
    process_count: number of hosts; defaults to `jax.process_count()`.
    num_classes: the class model's classes (labels 0..num_classes-1; the id
      num_classes is its null class): a source with more classes is refused.
    tokenizer: required by captioned sources (CAPTION_SOURCE_NAMES), refused
      by class sources: an object with `tokenize(list[str])` returning
      `input_ids` and `attention_mask`, (B, L) ints with a fixed L (e.g.
      `pixnerd_jax.models.text_encoder.TextEncoder`). It runs on this thread, after
      the worker processes, so it need not be picklable. 'synthetic' takes one
      (captions) or none (class labels).
    sharding: 'synthetic' only: the batch sharding its arrays are drawn into
      (default: the batch axis over all devices); other sources ignore it.

  Returns:
    A Grain iterator yielding dicts of numpy arrays with
    local_batch = global_batch_size // process_count:
      `image`: float32 (local_batch, S, S, 3) in [-1, 1].
      `raw_image`: float32 (local_batch, S, S, 3) in [0, 1].
      `label`: int32 (local_batch,); class sources and digits_captions.
      `input_ids`, `attention_mask`: int32 (local_batch, L); captioned
        sources.
      `num_skipped`: int32 (), unreadable examples dropped while assembling
        this batch (sum it over batches and hosts for a running total).
    `batch_keys(data_config)` lists the fields with a batch axis. The
    iterator has `get_state()` / `set_state()`; see `iterator_checkpoint_args`
    for saving it with Orbax. The batches depend on (seed, num_workers,
    process layout): restore with the same three.

  Raises:
    ValueError: bad config, indivisible batch, fewer examples than one global
      batch, or a tokenizer missing / given where it does not belong.
    FileNotFoundError: missing folder, no shard matching the glob, unprepared
      TFDS data.
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

  if data_config.name == SYNTHETIC:
    return synthetic.SyntheticIterator(
        global_batch_size=global_batch_size, resolution=int(data_config.resolution),
        seed=seed, num_classes=int(data_config.get('synthetic_num_classes', 10)),
        tokenizer=tokenizer, sharding=sharding)
  captioned = is_captioned(data_config)
  if captioned and tokenizer is None:
    raise ValueError(
        f'config.data.name={data_config.name!r} is a captioned source: pass '
        'create_train_iterator(..., tokenizer=...) (e.g. the TextEncoder) to '
        'turn its captions into input_ids and attention_mask.')
  if not captioned and tokenizer is not None:
    raise ValueError(
        f'config.data.name={data_config.name!r} is a class-labelled source '
        'and has no captions to tokenize: drop the tokenizer, or choose one of '
        f'the captioned sources {CAPTION_SOURCE_NAMES}.')
  token_length = captions.token_length(tokenizer) if captioned else None

  source = make_source(data_config)
  if process_count > 1 and jax.process_count() == process_count:
    check_hosts_agree(source, data_config)
  if num_classes is not None:
    check_labels_fit(source, data_config, num_classes)
  if len(source) < global_batch_size:
    raise DataError(
        f'The {data_config.name!r} dataset has {len(source)} examples, fewer '
        f'than one global batch ({global_batch_size}). Add data or lower the '
        'batch size.')

  ds = grain.MapDataset.range(len(source))
  if data_config.get('shuffle', True):
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat()  # Infinite; a shuffled parent is reshuffled every epoch.
  load = loading.LoadCaptionedExample if captioned else loading.LoadExample
  ds = ds.map_with_index(load(
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
  # Failed examples travel as batching.Skipped, so the batcher counts them.
  it_ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads,
                        prefetch_buffer_size=prefetch_batches *
                        local_batch_size))
  it_ds = batching.FullBatchIterDataset(
      it_ds, batch_size=local_batch_size,
      max_consecutive_skips=min(len(source), MAX_CONSECUTIVE_SKIPS))

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
  if captioned:
    it_ds = it_ds.map(captions.TokenizeCaptions(tokenizer, token_length))
  return iter(it_ds)
