"""Shared test setup: the repo root on sys.path, fixture discovery."""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

# libtpu (installed for the AOT tests) would otherwise probe for TPUs in every process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Runs trained in this process then compile as `python -m pixnerd_jax.main` does, so
# they match its subprocess runs bit for bit (resume tests compare the two). Before any
# test creates a JAX backend; subprocesses inherit it.
from pixnerd_jax.runtime import xla_cpu_flags  # pylint: disable=g-import-not-at-top,wrong-import-position
xla_cpu_flags.for_cpu_training(os.environ["JAX_PLATFORMS"])

# The tests' programs are tiny: XLA's compile, not running them, is most of the suite's
# time, and LLVM's optimisation passes are most of a CPU compile (a tiny training run
# compiles in half the time without them). Without them a result may round differently
# in its last bits: parity tests compare with tolerances, and bitwise tests compare runs
# made with the same flags, as subprocesses inherit these (tests/device_env.py keeps them
# when it adds devices). A user's own setting wins.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_backend_optimization_level=0").strip()

# One persistent XLA cache for the session: dozens of tests (and their subprocesses, which
# inherit the variables) compile the same tiny programs, and XLA's compile is most of a
# tiny run's time. A cached executable is the one XLA would build, so bitwise comparisons
# between runs hold either way. Removed at exit; PIXNERD_TEST_JAX_CACHE keeps one across
# sessions.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = os.environ.get("PIXNERD_TEST_JAX_CACHE") or tempfile.mkdtemp(prefix="jax_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  if "PIXNERD_TEST_JAX_CACHE" not in os.environ:
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

# The files that take longest (seconds of a 2-core run, measured), collected first: with
# `-n 2 --dist loadfile` each worker takes the next file as it finishes one, so the long
# ones start early and the short ones fill in around them instead of one worker running
# test_train.py alone at the end. Stable: the tests within a file keep their order.
LONGEST_FILES = ("test_docs.py", "test_train.py", "test_multihost.py", "test_faults.py",
                 "test_train_t2i.py", "test_sample_t2i.py", "test_benchmarks.py",
                 "test_models.py", "test_samplers.py", "test_models_t2i.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))

FIXTURES_DIR = ROOT.parent / "shared" / "reference" / "fixtures"


def fixture_files():
  """The official model's fixtures (pixnerd_*.npz); the folder also holds other kinds, such
  as the ADM suite's metrics, which are not conversion fixtures."""
  return sorted(FIXTURES_DIR.glob("pixnerd_*.npz")) if FIXTURES_DIR.is_dir() else []


@pytest.fixture
def reference_fixtures():
  files = fixture_files()
  if not files:
    pytest.skip(f"No parity fixtures: {FIXTURES_DIR} is absent (CI provides ../shared).")
  return files


def _named_fixture(name: str) -> pathlib.Path:
  path = FIXTURES_DIR / name
  if not path.is_file():
    pytest.skip(f"No parity fixture {path} (CI provides ../shared).")
  return path


@pytest.fixture
def c2i_fixture():
  """The official c2i model on a 32x48 image, with an Euler run."""
  return _named_fixture("pixnerd_c2i_tiny.npz")


@pytest.fixture
def samplers_fixture():
  """The official Euler, Heun and AdamLM samplers on a c2i model."""
  return _named_fixture("pixnerd_c2i_samplers_tiny.npz")


@pytest.fixture
def t2i_fixture():
  """The official t2i denoiser, its heavy-decoder form and AdamLM/Euler runs."""
  return _named_fixture("pixnerd_t2i_tiny.npz")
