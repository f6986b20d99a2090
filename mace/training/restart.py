"""--restart_latest: resume a run from its newest readable checkpoint, and only the same run.

Every checkpoint records the run's defining settings
(:func:`mace.cli.arg_parser.defining_settings`: each run_train flag except those that may
change on restart, with the adapter settings as resolved from the flags and the MMEA_*
environment variables). A restart whose settings differ is refused, naming each
difference, instead of failing inside ``load_state_dict`` or silently training with the
checkpoint's optimiser settings. A damaged newest checkpoint (a truncated copy, a full disk)
is skipped with a warning and the previous one is used.
"""
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from mace.training.checkpoint import CheckpointHandler
from mace.core.errors import UserInputError, one_line
from mace.core.files import atomic_write
from mace.training.distributed import is_main_process
from mace.training.train import Trainer

Resumable = Tuple[Path, Dict[str, Any]]


def settings_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], older_meanings: Optional[Mapping[str, Any]] = None
) -> List[str]:
    """'--flag=saved (now current)' for every setting that changed. A flag the checkpoint
    does not know (added by a later version) is compared with what its absence meant
    (``older_meanings``), where that is known, else not compared."""
    saved = {**(older_meanings or {}), **saved}
    return [
        f"--{flag}={saved[flag]!r} (now {value!r})"
        for flag, value in current.items()
        if flag in saved and saved[flag] != value
    ]


def newest_readable_checkpoint(checkpoints: CheckpointHandler, device: torch.device) -> Optional[Resumable]:
    """The newest checkpoint that loads, with its state; a damaged newer one is skipped with
    one warning naming it. None when the run has no checkpoint yet."""
    found = checkpoints.list()
    newest_reason: Optional[str] = None
    for _, _, path in reversed(found):
        try:
            return path, CheckpointHandler.load(path, device)
        except UserInputError as error:
            logging.warning("%s; falling back to the previous checkpoint", error)
            newest_reason = newest_reason or str(error)
    if found:
        raise UserInputError(
            f"--restart_latest: none of the {len(found)} checkpoint(s) of {checkpoints.tag} in "
            f"'{checkpoints.directory}' can be read (the newest: {newest_reason}); delete them to start afresh"
        )
    return None


def check_same_run(
    path: Path, state: Mapping[str, Any], current: Mapping[str, Any], older_meanings: Optional[Mapping[str, Any]] = None
) -> None:
    """Refuse (UserInputError) to resume from a checkpoint of a run with other settings;
    ``older_meanings``: what flags a checkpoint lacks meant (:func:`settings_differences`)."""
    saved = state.get("run_settings")
    if saved is None:
        logging.warning(
            "Checkpoint %s records no run settings (an older version wrote it): they are not "
            "checked, and the shuffling order restarts from --seed", path,
        )
        return
    differences = settings_differences(saved, current, older_meanings)
    if differences:
        raise UserInputError(
            f"--restart_latest: checkpoint '{path}' was written with other settings: "
            f"{', '.join(differences)}. Restart with the checkpoint's values (docs/training.md lists "
            "the flags that may change), or start a new run with another --name or --seed"
        )


def checkpoint_to_resume(
    checkpoints: CheckpointHandler,
    settings: Mapping[str, Any],
    device: torch.device,
    older_meanings: Optional[Mapping[str, Any]] = None,
) -> Optional[Resumable]:
    """The checkpoint --restart_latest continues from, checked to belong to this run
    (:func:`check_same_run`); None when there is none yet (the run starts from scratch)."""
    found = newest_readable_checkpoint(checkpoints, device)
    if found is None:
        logging.info("--restart_latest: no checkpoint of this run yet, starting from scratch")
        return None
    check_same_run(*found, settings, older_meanings)
    return found


def _epoch_of(line: str) -> Optional[int]:
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None


def drop_results_after(results: Path, epoch: int) -> None:
    """Remove the trailing result lines of epochs after ``epoch`` (and a line cut short by
    the kill): the resumed run writes them again, and the file reads as one uninterrupted run."""
    if not results.is_file():
        return
    lines = results.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = len(lines)
    while keep:
        last = _epoch_of(lines[keep - 1])
        if last is not None and last <= epoch:
            break
        keep -= 1
    if keep < len(lines):
        atomic_write(results, lambda temporary: Path(temporary).write_text("".join(lines[:keep]), encoding="utf-8"))


def resume(trainer: Trainer, checkpoint: Resumable) -> None:
    """Restore ``trainer`` from ``checkpoint`` and drop the results it will write again."""
    path, state = checkpoint
    try:
        trainer.restore(state)
    except (RuntimeError, KeyError, ValueError) as error:  # what load_state_dict raises on a misfit
        raise UserInputError(f"Checkpoint '{path}' does not fit this run's model: {one_line(error)}") from error
    if is_main_process():
        drop_results_after(trainer.results_path, state["epoch"])
    logging.info("Resuming after epoch %d from %s", trainer.progress.epoch - 1, path)
