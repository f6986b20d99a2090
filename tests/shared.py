"""Where the tests find the read-only shared folder, and the commands its documents pin.

The folder is looked up by :func:`repro_data.fetch.shared_folder` (``$MMEA_SHARED``, else
``shared`` beside the repository), as the fetcher and the benchmark do; tests that need it
skip when it is absent.
"""
import os
import re
import shlex
import socket
from pathlib import Path
from typing import List

import pytest

from repro_data.fetch import shared_folder

__all__ = [
    "shared_folder", "shared_folder_or_skip", "documented_seed_command", "documented_anchor_flags", "upstream_python_or_skip",
    "free_local_port",
]

# An environment with upstream mace-torch 0.3.16 installed (never this package), as a test
# oracle; tests that compare with upstream's own outputs skip without it.
UPSTREAM_PYTHON = Path(os.environ.get("MACE_UPSTREAM_PYTHON", "/work/upstream-venv/bin/python"))


def upstream_python_or_skip(what: str) -> Path:
    """The upstream environment's python; the calling test, which checks ``what``, skips without it."""
    if not UPSTREAM_PYTHON.is_file():
        pytest.skip(f"no upstream mace-torch 0.3.16 venv at {UPSTREAM_PYTHON} (set MACE_UPSTREAM_PYTHON): {what} not tested")
    return UPSTREAM_PYTHON


def shared_folder_or_skip() -> Path:
    """The shared folder; the calling test skips when it is absent."""
    path = shared_folder()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not found (set MMEA_SHARED)")
    return path


def _shared_document(relative: str) -> str:
    path = shared_folder_or_skip() / relative
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path.read_text(encoding="utf-8")


def documented_seed_command() -> List[str]:
    """The run_train flags under 'Quick Validation' in the seed README, as written there."""
    section = _shared_document("seed/MMEA-README.md").split("## Quick Validation", 1)[-1]
    line = next((row for row in section.splitlines() if row.strip().startswith("python -m mace.cli.run_train")), None)
    assert line is not None, "the seed README has no run_train command under 'Quick Validation'"
    return shlex.split(line)[3:]


def documented_anchor_flags() -> List[str]:
    """The flags of protocol cpu100's command in docs/anchors.md, as written, up to the
    ``--foundation_model=<the shared foundation>`` placeholder."""
    match = re.search(r"`(--E0s=[^`]*)`", _shared_document("docs/anchors.md"))
    assert match is not None, "docs/anchors.md has no command starting with --E0s in backquotes"
    return match.group(1).split("--foundation_model=", 1)[0].split()


def free_local_port() -> int:
    """A TCP port free on this machine now, for the rendezvous of a test's process group."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
