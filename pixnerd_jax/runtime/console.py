"""What every command-line entry point shares: a quiet start and errors a person can read.

    @console.entry_point(known=(ConfigError, CheckpointError), oom_hint="lower --batch_size")
    def main(argv):
      console.quiet_start()
      ...

`quiet_start()` keeps JAX from loading libtpu on hosts without TPU chips (libtpu prints
"could not determine TPU accelerator type" and INVALID_ARGUMENT lines at every start
there) and keeps the aftermath of library failures off the console: exceptions raised in
TensorStore callbacks after asyncio closed their event loop, never-retrieved task errors,
never-awaited coroutines, tracebacks Orbax logs from its background threads. They stay available at debug level.

`entry_point` turns an exception into one line, `error: <what is wrong and what to do>`,
on stderr with the exit code; library details (TensorStore specs, XLA dumps) are cut, and
the full traceback follows only at debug level (--verbosity=1, or --verbose). An
exception it does not know is a bug: its line is followed by the traceback.
"""

import contextlib
import functools
import logging as std_logging
import os
import re
import sys
import tempfile
import traceback
import warnings
from typing import Callable, Iterable

from absl import app
from absl import logging

from pixnerd_jax.runtime import distributed
from pixnerd_jax.runtime import host_malloc
from pixnerd_jax.runtime import xla_cpu_flags

_SPEC = re.compile(r"\s*\[tensorstore_spec(?:\[\d+\])?='.*?'\]", re.DOTALL)
_DRIVER_PREFIX = re.compile(r'Error opening "\w+" driver: ')
_EVENT_LOOP_CLOSED = "Event loop is closed"
_NEVER_RETRIEVED = "exception was never retrieved"  # Task, Future, _GatheringFuture
# Orbax's read coroutines dropped unawaited when a restore fails (our code has none).
_NEVER_AWAITED = r"coroutine .* was never awaited"


def summary(error: BaseException, limit: int = 400) -> str:
  """The message of `error` in one line of at most `limit` characters.

  TensorStore specs (~60 lines of JSON per array) and the repeated 'Error opening
  "zarr" driver' prefixes are dropped; a multi-line message keeps its first line.
  """
  text = _DRIVER_PREFIX.sub("", _SPEC.sub("", str(error))).strip()
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  text = lines[0] + (" [...]" if len(lines) > 1 else "")
  return text if len(text) <= limit else text[:limit - 5] + "[...]"


# ----------------------------------------------------------------------------- quiet start


def host_has_tpu() -> bool:
  """Whether TPU chips are attached to this host (device files or Google TPU PCI ids)."""
  if distributed.local_tpu_device_paths():
    return True
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except Exception:  # pylint: disable=broad-except
    return False


def skip_tpu_backend() -> str | None:
  """Off TPU hosts, lets JAX pick among its other backends (GPU plugins, CPU) only.

  JAX tries libtpu on every start when it is installed; with no chips it fails quietly
  for JAX but libtpu itself prints its metadata lookups to stderr. Only the TPU backend
  is unregistered: jax_platforms stays unset, so JAX still chooses among the rest as it
  would (a GPU plugin with no visible GPU, e.g. CUDA_VISIBLE_DEVICES="" on a login
  node, falls back to CPU; naming every plugin in jax_platforms would make its failure
  fatal). Leaves JAX alone on a TPU host (real TPU errors stay visible) and when
  JAX_PLATFORMS is set. Returns the platforms left, highest priority first, or None.
  Must run before anything touches a device.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or host_has_tpu():
    return None
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    xla_bridge._discover_and_register_pjrt_plugins()  # pylint: disable=protected-access
    registered = xla_bridge._backend_factories  # pylint: disable=protected-access
    # Highest priority first, as JAX orders them when it chooses the default backend.
    names = sorted((n for n in registered if n != "tpu"),
                   key=lambda n: -registered[n].priority)
  except Exception:  # pylint: disable=broad-except
    return None  # another JAX version: keep its default (noisy, but working)
  if not names:
    return None
  registered.pop("tpu", None)
  return ",".join(names)


# What libtpu prints while it loads on a host that is not a TPU VM (its metadata lookups).
_LIBTPU_NOISE = tuple(re.compile(p) for p in (
    r"could not determine TPU", r"Logging before InitGoogle", r"=== Source Location Trace",
    r"^\S+\.cc:\d+\s*$"))


@contextlib.contextmanager
def libtpu_noise_filtered():
  """Around code that loads libtpu on purpose (the aot entry point's topologies), off TPU hosts: the
  process's stderr (fd 2, where libtpu writes) is held back and written out afterwards
  without libtpu's metadata-lookup lines; everything else it printed is kept."""
  if host_has_tpu():
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      for line in held.read().decode(errors="replace").splitlines(keepends=True):
        if not any(p.search(line) for p in _LIBTPU_NOISE):
          sys.stderr.write(line)
      sys.stderr.flush()


def _debug_enabled() -> bool:
  return logging.get_verbosity() >= logging.DEBUG


class _LibraryNoise(std_logging.Filter):
  """Orbax's INFO chatter, its background-thread tracebacks and asyncio's leftovers."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.name == "asyncio" and _NEVER_RETRIEVED in str(record.msg):
      return _debug_enabled()  # reads left over from a failed restore
    if "orbax" not in record.pathname or _debug_enabled():
      return True
    if record.levelno < std_logging.WARNING:
      return False
    if record.exc_info:  # our own error names the failure; keep one line of theirs
      record.msg, record.args = summary(Exception(record.getMessage()), 200), None
      record.exc_info, record.exc_text = None, None
    return True


_LIBRARY_DIRS = ("/orbax/", "/tensorstore/", "/asyncio/")


def _from_library(unraisable) -> bool:
  """Whether an unraisable exception is the aftermath of a failed Orbax/TensorStore read:
  asyncio's closed loop called back by TensorStore, or Orbax's read coroutines dropped
  with their errors once the first error ended the restore."""
  if (isinstance(unraisable.exc_value, RuntimeError) and
      str(unraisable.exc_value) == _EVENT_LOOP_CLOSED):
    return True
  code = getattr(getattr(unraisable, "object", None), "cr_code", None)
  files = [code.co_filename] if code else []
  files += [frame.filename for frame in traceback.extract_tb(
      getattr(unraisable, "exc_traceback", None))]
  return any(d in f for f in files for d in _LIBRARY_DIRS)


def _quiet_unraisable(previous: Callable) -> Callable:
  def hook(unraisable):
    if _from_library(unraisable):
      if _debug_enabled():
        logging.debug("Ignored in a library callback: %s", unraisable.exc_value)
      return
    previous(unraisable)
  hook.pixnerd_quiet = True
  return hook


def quiet_start(tpu: bool = True, training: bool = False) -> None:
  """Call first in an entry point's main: see the module doc. tpu=False leaves the JAX
  backends alone (a tool that loads libtpu on purpose). On the CPU backend it also
  keeps XLA's per-step scratch memory mapped (host_malloc.py) and, for the training
  entry point (training=True), sets the XLA flags of xla_cpu_flags.py."""
  platforms = skip_tpu_backend() if tpu else None
  if tpu:
    import jax  # pylint: disable=g-import-not-at-top
    platforms = platforms or os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms
    host_malloc.for_cpu_backend(platforms)
    if training:
      xla_cpu_flags.for_cpu_training(platforms)
  if not getattr(sys.unraisablehook, "pixnerd_quiet", False):
    sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
  if not _debug_enabled():
    warnings.filterwarnings("ignore", message=_NEVER_AWAITED, category=RuntimeWarning)
  for name in ("absl", "asyncio"):
    logger = std_logging.getLogger(name)
    if not any(isinstance(f, _LibraryNoise) for f in logger.filters):
      logger.addFilter(_LibraryNoise())


# ----------------------------------------------------------------------------- errors


def out_of_memory(error: BaseException) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or isinstance(error, MemoryError)


def report(error: BaseException, advice: str = "", verbose: bool = False) -> None:
  """Prints `error: <summary>` (with advice: `error: <advice> (<summary>)`) to stderr,
  then the traceback if verbose or at debug level."""
  text = f"{advice} ({summary(error, 300)})" if advice else summary(error, 600)
  print(f"error: {text}", file=sys.stderr, flush=True)
  if verbose or _debug_enabled():
    traceback.print_exception(error, file=sys.stderr)


def _short_traceback(error: BaseException) -> str:
  frames = "".join(traceback.format_tb(error.__traceback__))
  return (f"Traceback (most recent call last):\n{frames}"
          f"{type(error).__module__}.{type(error).__qualname__}: {summary(error, 2000)}")


def entry_point(known: Iterable[type] = (), code: int = 1, oom_hint: str = ""):
  """Decorates an entry point's main: an error becomes one line on stderr, and main
  returns `code` (absl's app.run and `sys.exit(main())` exit with it).

  Args:
    known: exception types whose messages already say what to do (config, checkpoint,
      file errors): printed as they are, cut to one line.
    code: the exit code for errors.
    oom_hint: what to do when a device runs out of memory (XLA RESOURCE_EXHAUSTED).
  Anything else is a bug: its line is followed by the traceback (library messages in it
  cut). --verbosity=1 (absl) or logging.set_verbosity(DEBUG) prints full tracebacks.
  """
  known = tuple(known)

  def wrap(main):
    @functools.wraps(main)
    def run(*args, **kwargs):
      try:
        return main(*args, **kwargs)
      except (SystemExit, KeyboardInterrupt, app.UsageError):
        raise  # absl prints usage for UsageError
      except known as e:
        report(e)
      except Exception as e:  # pylint: disable=broad-except
        if out_of_memory(e):
          report(e, f"out of memory: {oom_hint or 'use a smaller batch'}")
          return code
        print(f"error: unexpected {type(e).__name__}: {summary(e)} (a bug, or a case "
              "this tool does not handle yet: please report it with the traceback below)",
              file=sys.stderr, flush=True)
        print(traceback.format_exc() if _debug_enabled() else _short_traceback(e),
              file=sys.stderr, flush=True)
      return code
    return run
  return wrap
