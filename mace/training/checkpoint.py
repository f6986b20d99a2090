"""Training checkpoints in upstream's layout: checkpoints/NAME_run-SEED_epoch-N[_swa].pt.

Each file holds everything needed to resume (model, optimiser, schedulers, EMA, epoch,
best-loss bookkeeping, shuffling state) and the run's defining settings (``run_settings``,
see :mod:`mace.training.restart`). It is written atomically, so a run killed at any moment
leaves only complete checkpoints. All of it is plain data (state dicts of tensors, numbers,
strings, lists, tuples and dicts), so a checkpoint is read with ``weights_only=True``,
allowing no globals beyond torch's own: a file that names any code is refused, never run.
"""
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from mace.core.errors import UserInputError, one_line
from mace.core.files import atomic_torch_save

_FILE_PATTERN = re.compile(r"_epoch-(\d+)(_swa)?\.pt$")
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # how torch's weights-only refusal names it


class CheckpointHandler:
    """Saves, lists and loads the checkpoints of one run (identified by its tag); with
    ``run_settings``, every checkpoint records them so that a restart can be checked."""

    def __init__(
        self, directory: str, tag: str, keep: bool = False, run_settings: Optional[Dict[str, Any]] = None
    ) -> None:
        self.directory = Path(directory)
        self.tag = tag
        self.keep = keep
        self.run_settings = run_settings

    def path(self, epoch: int, swa: bool) -> Path:
        return self.directory / f"{self.tag}_epoch-{epoch}{'_swa' if swa else ''}.pt"

    def save(self, state: Dict[str, Any], epoch: int, swa: bool, protected: Tuple[Path, ...] = ()) -> Path:
        """Write a checkpoint; unless ``keep``, remove older ones except ``protected`` (the best)."""
        path = self.path(epoch, swa)
        recorded = state if self.run_settings is None else {**state, "run_settings": self.run_settings}
        atomic_torch_save(recorded, path)
        if not self.keep:
            for old_epoch, old_swa, old_path in self.list():
                if old_path != path and old_path not in protected:
                    old_path.unlink(missing_ok=True)
        return path

    def list(self) -> List[Tuple[int, bool, Path]]:
        """(epoch, swa, path) of this run's checkpoints, oldest first."""
        found = []
        for path in self.directory.glob(f"{self.tag}_epoch-*.pt"):
            match = _FILE_PATTERN.search(path.name)
            if match and path.name.startswith(f"{self.tag}_epoch-"):
                found.append((int(match.group(1)), match.group(2) is not None, path))
        return sorted(found, key=lambda item: (item[0], item[1]))

    def remove_stale_temporaries(self) -> List[Path]:
        """Delete half-written checkpoint files of this run left by a process killed mid-save."""
        stale = sorted(self.directory.glob(f".{self.tag}_epoch-*.pt.*.tmp"))
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            logging.info("Removed %d unfinished checkpoint file(s) of an interrupted run", len(stale))
        return stale

    def latest(self) -> Optional[Path]:
        checkpoints = self.list()
        return checkpoints[-1][2] if checkpoints else None

    @staticmethod
    def load(path: Path, device: torch.device) -> Dict[str, Any]:
        """The state saved in ``path``, read as data only; UserInputError naming the file otherwise."""
        logging.info("Loading checkpoint %s", path)
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except Exception as error:  # a damaged or foreign file makes torch raise many types
            refused = _REFUSED_GLOBAL.search(str(error))
            reason = (
                f"it refers to {refused.group(1)}, and a checkpoint holds only tensors and plain data"
                if refused else one_line(error)
            )
            raise UserInputError(f"Checkpoint '{path}' could not be loaded: {reason}") from error
