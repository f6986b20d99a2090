"""Test helpers shared by all test folders: where the read-only project data lives."""
import logging
import os
from pathlib import Path

import pytest

import mace  # noqa: F401  (before any test imports e3nn: allows its constants under torch >= 2.6)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder (env MMEA_SHARED, default <repo>/../shared); skip if absent."""
    path = Path(os.environ.get("MMEA_SHARED", REPO_ROOT.parent / "shared"))
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not found (set MMEA_SHARED)")
    return path


@pytest.fixture(autouse=True)
def no_leftover_log_handlers():
    """run_train's handlers write to the streams of the test that set them up; drop them after it."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
