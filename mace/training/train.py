"""The training loop: epochs of optimiser steps, periodic evaluation, checkpoints, SWA stage.

Trainability was decided before (adapters freeze what must not move); the loop only
steps the optimiser it is given.
"""
import json
import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch_ema import ExponentialMovingAverage

from mace.data import batch_to_device
from mace.data.loader import restore_shuffle_state, set_loader_epoch, shuffle_state
from mace.modules.loss import needs_stress, needs_virials
from mace.training.checkpoint import CheckpointHandler
from mace.training.distributed import barrier, gather_objects, is_distributed, is_main_process
from mace.training.metrics import ErrorAccumulator, evaluation_summary


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and the last good checkpoint."""


@dataclass
class OutputRequest:
    """Which derivatives the model must return for the loss and the metrics."""

    stress: bool = False
    virials: bool = False

    def model_kwargs(self) -> Dict[str, bool]:
        return {"compute_force": True, "compute_stress": self.stress, "compute_virials": self.virials}


def output_request_for(loss_fn: torch.nn.Module, error_table: str, compute_stress: bool = False) -> OutputRequest:
    """Stress and virials when the loss or the error table needs them, or when asked for
    (--compute_stress: their errors then join the evaluation metrics)."""
    wants_stress = error_table == "PerAtomRMSEstressvirials" or compute_stress
    return OutputRequest(
        stress=needs_stress(loss_fn) or wants_stress,
        virials=needs_virials(loss_fn) or wants_stress,
    )


@dataclass
class SWASettings:
    """Stage two: from ``start_epoch`` the loss weights change and the lr drops to ``lr``.

    ``schedule`` 'constant' keeps ``lr`` to the end (upstream); 'cosine' lowers it along half
    a cosine towards zero at ``end_epoch`` (the first epoch after training).
    ``warmup_epochs``: the stage's first epochs train at a linearly rising share of that rate
    (1/(W+1), 2/(W+1), ...), so that an optimiser reset does not begin with full-size steps.
    ``reset_optimizer``: forget the optimiser's moment estimates at ``start_epoch``, so that
    its steps are scaled to the stage-two loss's gradients, not the main stage's.
    """

    start_epoch: int
    loss_fn: torch.nn.Module
    lr: float
    end_epoch: int
    schedule: str = "constant"
    reset_optimizer: bool = False
    warmup_epochs: int = 0

    def lr_at(self, epoch: int) -> float:
        return self._scheduled_lr(epoch) * min(1.0, (epoch - self.start_epoch + 1) / (self.warmup_epochs + 1))

    def _scheduled_lr(self, epoch: int) -> float:
        if self.schedule == "constant":
            return self.lr
        progress = (epoch - self.start_epoch) / max(self.end_epoch - self.start_epoch, 1)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class LoopSettings:
    max_num_epochs: int
    eval_interval: int
    patience: int
    clip_grad: Optional[float]
    error_table: str
    compute_stress: bool = False


@dataclass
class Progress:
    """Best validation loss per stage and the patience counter: what a restart must restore."""

    epoch: int = 0
    best: Dict[str, Tuple[float, int]] = field(default_factory=dict)
    patience_counter: int = 0
    last_valid_loss: float = math.inf


class ProgressDisplay:
    """Batch progress on stderr for long epochs (a carriage-return line on terminals); shown
    by the main process only."""

    def __init__(self, total: int, label: str, min_interval_s: float = 2.0) -> None:
        self.enabled = is_main_process()
        self.total = total
        self.label = label
        self.min_interval_s = min_interval_s
        self.start = time.perf_counter()
        self.last = self.start
        self.shown = False

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.min_interval_s and done < self.total:
            return
        if not self.shown and done == self.total:
            return
        self.last = now
        self.shown = True
        rate = done / max(now - self.start, 1e-9)
        remaining = (self.total - done) / max(rate, 1e-9)
        end = "\r" if sys.stderr.isatty() else "\n"
        print(f"{self.label}: {done}/{self.total} batches, {remaining:.0f} s left", end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.shown and sys.stderr.isatty():
            print(file=sys.stderr)


@dataclass
class EpochStats:
    """Mean batch loss of an epoch, and how long its steps waited for their batches (data
    loading the workers did not hide)."""

    loss: float
    data_wait_s: float


def train_one_epoch(
    model: torch.nn.Module,
    loader: Iterable,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: Optional[ExponentialMovingAverage],
    clip_grad: Optional[float],
    device: torch.device,
    request: OutputRequest,
    label: str,
) -> EpochStats:
    """One pass over the training data."""
    model.train()
    display = ProgressDisplay(len(loader), label)
    total = 0.0
    waited = 0.0
    ready = time.perf_counter()
    for index, batch in enumerate(loader):
        waited += time.perf_counter() - ready
        batch = batch_to_device(batch, device)
        model.zero_grad(set_to_none=True)
        output = model(batch, training=True, **request.model_kwargs())
        loss = loss_fn(batch, output)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"{label}: the training loss became {loss.item()} at batch {index}")
        loss.backward()
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(_parameters_with_grad(model), max_norm=clip_grad)
        optimizer.step()
        if ema is not None:
            ema.update()
        total += loss.item()
        display.update(index + 1)
        ready = time.perf_counter()
    display.close()
    return EpochStats(loss=total / max(len(loader), 1), data_wait_s=waited)


def _parameters_with_grad(model: torch.nn.Module) -> list:
    """What upstream clips: every parameter with a gradient, optimised or not (Bessel frequencies)."""
    return [p for p in model.parameters() if p.grad is not None]


def evaluate(
    model: torch.nn.Module,
    loader: Iterable,
    loss_fn: torch.nn.Module,
    device: torch.device,
    request: OutputRequest,
    label: str = "Evaluation",
) -> Tuple[float, Dict[str, float]]:
    """Mean batch loss and error metrics over a data set (gradients only for forces).

    In a data-parallel run ``loader`` holds this process's shard: the errors and batch
    losses of every shard are gathered, so each process gets the whole set's numbers."""
    model.eval()
    accumulator = ErrorAccumulator()
    display = ProgressDisplay(len(loader), label)
    total = 0.0
    for index, batch in enumerate(loader):
        batch = batch_to_device(batch, device)
        output = model(batch, training=False, **request.model_kwargs())
        total += loss_fn(batch, output).item()
        accumulator.add(batch, output)
        display.update(index + 1)
    display.close()
    shards = gather_objects((total, len(loader), accumulator))
    total_loss = sum(loss for loss, _, _ in shards)
    batches = sum(count for _, count, _ in shards)
    return total_loss / max(batches, 1), ErrorAccumulator.combined([part for _, _, part in shards]).metrics()


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module the optimiser steps through: ``model`` itself, or in a data-parallel run
    its DistributedDataParallel wrapper, which averages the gradients of the trainable
    parameters over processes (frozen foundation weights take no part)."""
    if not is_distributed():
        return model
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


class Trainer:
    """Runs epochs from a given progress to the end, writing logs, results and checkpoints.

    ``valid_loaders`` holds one validation set per head (in the model's head order). With
    several (multi-head replay fine-tuning), each is evaluated and logged, and the last
    head's loss, the fine-tuned head's, chooses checkpoints and drives the schedulers, as upstream.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any,
        ema: Optional[ExponentialMovingAverage],
        swa: Optional[SWASettings],
        train_loader: Iterable,
        valid_loaders: Mapping[str, Iterable],
        checkpoints: CheckpointHandler,
        results_path: Path,
        settings: LoopSettings,
        device: torch.device,
    ) -> None:
        self.model = model
        self.train_module = data_parallel(model, device)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.ema = ema
        self.swa = swa
        self.train_loader = train_loader
        self.valid_loaders = dict(valid_loaders)
        self.checkpoints = checkpoints
        self.results_path = Path(results_path)
        self.settings = settings
        self.device = device
        self.progress = Progress()

    def in_swa_stage(self, epoch: int) -> bool:
        return self.swa is not None and epoch >= self.swa.start_epoch

    def stage_loss(self, epoch: int) -> torch.nn.Module:
        return self.swa.loss_fn if self.in_swa_stage(epoch) else self.loss_fn

    def averaged_parameters(self):
        return self.ema.average_parameters() if self.ema is not None else nullcontext()

    def state(self, epoch: int) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "epoch": epoch,
            "best": dict(self.progress.best),
            "patience_counter": self.progress.patience_counter,
            "last_valid_loss": self.progress.last_valid_loss,
            "swa_start_epoch": None if self.swa is None else self.swa.start_epoch,
            "shuffle_generator": shuffle_state(self.train_loader),
        }

    def restore(self, state: Dict[str, Any]) -> None:
        """Continue after the checkpointed epoch with every piece of optimiser state."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if self.swa is not None and state.get("swa_start_epoch") is not None:
            self.swa.start_epoch = state["swa_start_epoch"]
        restore_shuffle_state(self.train_loader, state.get("shuffle_generator"))
        self.progress = Progress(
            epoch=state["epoch"] + 1,
            best=dict(state["best"]),
            patience_counter=state["patience_counter"],
            last_valid_loss=state["last_valid_loss"],
        )

    def run(self) -> None:
        request = output_request_for(self.loss_fn, self.settings.error_table, self.settings.compute_stress)
        epoch = self.progress.epoch
        epoch_times = []
        while epoch < self.settings.max_num_epochs:
            self._step_schedulers_before_epoch(epoch)
            started = time.perf_counter()
            stats = self._train_epoch(epoch, request)
            epoch_times.append(time.perf_counter() - started)
            self._write_result(
                {"mode": "opt", "epoch": epoch, "loss": stats.loss, "time": epoch_times[-1], "data_wait": stats.data_wait_s}
            )
            if epoch % self.settings.eval_interval == 0:
                stop = self._evaluate_and_checkpoint(epoch, request, epoch_times)
                if stop:
                    if self.swa is not None and not self.in_swa_stage(epoch):
                        logging.info("No improvement for %d evaluations: jumping to the SWA stage", self.progress.patience_counter)
                        epoch = max(epoch + 1, self.swa.start_epoch)
                        self.swa.start_epoch = epoch
                        self.progress.patience_counter = 0
                        continue
                    logging.info("Stopping: no improvement for %d evaluations (--patience)", self.progress.patience_counter)
                    break
            epoch += 1

    def _train_epoch(self, epoch: int, request: OutputRequest) -> EpochStats:
        try:
            set_loader_epoch(self.train_loader, epoch)
            return train_one_epoch(
                self.train_module,
                self.train_loader,
                self.stage_loss(epoch),
                self.optimizer,
                self.ema,
                self.settings.clip_grad,
                self.device,
                request,
                label=f"Epoch {epoch}",
            )
        except TrainingDivergedError as error:
            latest = self.checkpoints.latest()
            where = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
            raise TrainingDivergedError(
                f"{error}; training stopped ({where}). Try a lower --lr or check the data for outliers."
            ) from None

    def _step_schedulers_before_epoch(self, epoch: int) -> None:
        """Upstream's order: before every epoch but the first, the main scheduler steps (the
        plateau one with the last validation loss, however old, so its patience counts epochs);
        in the SWA stage the rate is --swa_lr from the stage's first epoch on (what upstream's
        SWALR with one linear annealing epoch, stepped before each epoch, amounts to)."""
        if self.in_swa_stage(epoch):
            if epoch == self.swa.start_epoch:
                logging.info("Epoch %d: starting the SWA stage (changing loss weights, lr -> %g)", epoch, self.swa.lr)
                if self.swa.reset_optimizer:
                    self.optimizer.state.clear()
                    logging.info("Epoch %d: optimiser moment estimates reset for the SWA stage", epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = self.swa.lr_at(epoch) * group.get("swa_lr_factor", 1.0)
        elif epoch > 0:
            if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.lr_scheduler.step(self.progress.last_valid_loss)
            else:
                self.lr_scheduler.step()

    def _evaluate_and_checkpoint(self, epoch: int, request: OutputRequest, epoch_times: list) -> bool:
        """Evaluate (EMA weights), log, save; returns True when patience ran out."""
        loss_fn = self.stage_loss(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        eta = _eta(epoch_times, self.settings.max_num_epochs - epoch - 1)
        several = len(self.valid_loaders) > 1
        with self.averaged_parameters():
            evaluations = [
                (head, *evaluate(self.model, loader, loss_fn, self.device, request, label=f"Epoch {epoch} validation"))
                for head, loader in self.valid_loaders.items()
            ]
        for head, valid_loss, metrics in evaluations:
            if not math.isfinite(valid_loss):
                raise TrainingDivergedError(f"Epoch {epoch}: the validation loss became {valid_loss}")
            logging.info(
                "Epoch %d: %s%s, lr=%.2e, %.2f s/epoch, ETA %s", epoch, f"head {head}: " if several else "",
                evaluation_summary(self.settings.error_table, valid_loss, metrics), lr, epoch_times[-1], eta,
            )
            head_record = {"head": head} if several else {}
            self._write_result({"mode": "eval", "epoch": epoch, **head_record, "loss": valid_loss, "lr": lr, **metrics})
        self.progress.last_valid_loss = valid_loss
        stage = "swa" if self.in_swa_stage(epoch) else "main"
        best_loss, _ = self.progress.best.get(stage, (math.inf, -1))
        if valid_loss < best_loss:
            self.progress.best[stage] = (valid_loss, epoch)
            self.progress.patience_counter = 0
        else:
            self.progress.patience_counter += 1
        if is_main_process():
            self.checkpoints.save(self.state(epoch), epoch, swa=stage == "swa", protected=self.best_checkpoint_paths())
        barrier()  # the best checkpoints are read back by every process at the end
        return self.progress.patience_counter >= self.settings.patience

    def best_checkpoint_paths(self) -> Tuple[Path, ...]:
        return tuple(self.checkpoints.path(epoch, stage == "swa") for stage, (_, epoch) in self.progress.best.items())

    def _write_result(self, record: Dict[str, Any]) -> None:
        append_result(self.results_path, record)


def append_result(path: Path, record: Dict[str, Any]) -> None:
    """One JSON line of the results file (NAME_run-SEED_train.txt), which programs read;
    only the main process of a data-parallel run writes it."""
    if not is_main_process():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _eta(epoch_times: list, remaining_epochs: int) -> str:
    recent = epoch_times[-5:]
    seconds = int(sum(recent) / len(recent) * max(remaining_epochs, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
