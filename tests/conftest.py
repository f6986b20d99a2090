"""Test helpers shared by all test folders: where the read-only project data lives."""
import logging
from pathlib import Path

import pytest
import torch

import mace  # noqa: F401  (before any test imports e3nn: allows its constants under torch >= 2.6)
from tests.shared import shared_folder_or_skip

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder (env MMEA_SHARED, default <repo>/../shared); skip if absent."""
    return shared_folder_or_skip()


@pytest.fixture(autouse=True)
def no_leftover_log_handlers():
    """run_train's handlers write to the streams of the test that set them up; drop them after it."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


@pytest.fixture
def float64_default():
    """torch's default dtype float64 during the test (graphs and models keep every bit of the
    data); use with ``pytestmark = pytest.mark.usefixtures("float64_default")``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
