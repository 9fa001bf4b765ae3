"""Shared test setup: the repo root on sys.path, fixture discovery."""

import os
import pathlib
import sys

import pytest

# libtpu (installed for the AOT tests) would otherwise probe for TPUs in every process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES_DIR = ROOT.parent / "shared" / "reference" / "fixtures"


def fixture_files():
  return sorted(FIXTURES_DIR.glob("*.npz")) if FIXTURES_DIR.is_dir() else []


@pytest.fixture
def reference_fixtures():
  files = fixture_files()
  if not files:
    pytest.skip(f"No parity fixtures: {FIXTURES_DIR} is absent (CI provides ../shared).")
  return files
