"""Train a MACE model, or fine-tune a foundation model with adapters (MMEA by default).

    python -m mace.cli.run_train --name NAME --train_file train.xyz [--foundation_model F] ...

The run is a short list of steps: parse -> data -> model (-> adapters) -> optimiser ->
train -> save -> evaluate. Each step lives in the module it belongs to.
"""
import argparse
import contextlib
import copy
import dataclasses
import itertools
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

import torch
from torch_ema import ExponentialMovingAverage

from mace.adapters import METHODS, count_trainable, freeze_blocks
from mace.adapters.io import save_adapter
from mace.adapters.prepare import (
    apply_adapters,
    prepare_foundation,
    resolve_foundation_path,
    set_finetuning_e0s,
)
from mace.data import make_loader
from mace.data.configuration import DEFAULT_HEAD
from mace.data.datasets import (
    Datasets,
    DataSettings,
    dataset_elements,
    load_datasets,
    replay_settings,
    upsampling_copies,
    with_label_weights_scaled,
    write_valid_indices,
)
from mace.data.statistics import average_num_neighbors, read_statistics, resolve_e0s, scale_and_shift
from mace.modules.builder import ModelSettings, build_model
from mace.modules.export import save_scripted
from mace.modules.loading import save_model
from mace.modules.loss import build_loss, build_stage_two_loss
from mace.modules.heads import FOUNDATION_HEAD, PRETRAINING_HEAD, ModelHeads, expand_heads
from mace.modules.models import MACE, model_heads
from mace.cli.arg_parser import (
    HEAD_DATA_KEYS,
    REPLAY_SELECTION_FLAGS,
    defining_settings,
    parse_args,
    parse_atomic_numbers,
    parse_config_type_weights,
    parse_e0s,
    parse_heads,
    parse_lr_params_factors,
    parse_radial_mlp,
)
from mace.cli.entry import run_cli
from mace.cli.logging_setup import setup_logging
from mace.core.atomic_numbers import AtomicNumberTable
from mace.core.errors import UserInputError, one_line
from mace.core.files import remove_stale_temporaries, unwritable_folder_reason
from mace.core.run_lock import RunLock
from mace.core.torch_setup import dtype_from_name, keep_freed_memory, select_device, set_seeds
from mace.modules.predict import model_graphs
from mace.training.checkpoint import CheckpointHandler
from mace.training.distributed import (
    SINGLE_PROCESS,
    ProcessPlace,
    joined_process_group,
    process_from_environment,
    shard,
)
from mace.training.optim import OptimizerSettings, build_optimizer, build_scheduler, trainable_parameters
from mace.training.reporting import evaluate_sets, log_error_table, write_final_errors, write_parameter_counts
from mace.training.restart import checkpoint_to_resume, resume
from mace.training.train import LoopSettings, SWASettings, Trainer, TrainingDivergedError, output_request_for

Settings = TypeVar("Settings")


@dataclass
class HeadData:
    """The data of one head of the model and the --E0s it takes; ``copies``: how often its
    training configurations enter an epoch (fine-tuning data beside much more replayed data
    is repeated)."""

    name: str
    datasets: Datasets
    e0s: Optional[str] = None
    copies: int = 1


@dataclass
class RunPaths:
    """Where a run writes, in upstream's layout."""

    tag: str
    log: Path
    results: Path
    valid_indices: Path
    checkpoints: Path
    model: Path
    swa_model: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunPaths":
        tag = f"{args.name}_run-{args.seed}"
        model_dir = Path(args.model_dir)
        return cls(
            tag=tag,
            log=Path(args.log_dir) / f"{tag}.log",
            results=Path(args.results_dir) / f"{tag}_train.txt",
            valid_indices=Path(args.results_dir) / f"{tag}_valid_indices.txt",
            checkpoints=Path(args.checkpoints_dir),
            model=model_dir / f"{args.name}.model",
            swa_model=model_dir / f"{args.name}_swa.model",
        )

    @staticmethod
    def adapter_file(model: Path) -> Path:
        """NAME_adapter.pt, next to a fine-tuned NAME.model or NAME_swa.model."""
        return model.with_name(f"{model.stem}_adapter.pt")

    @staticmethod
    def merged_file(model: Path) -> Path:
        """NAME_merged.model, the ELoRA or LoRA model with its updates folded in."""
        return model.with_name(f"{model.stem}_merged.model")

    @staticmethod
    def compiled_file(model: Path) -> Path:
        """NAME_compiled.model, the TorchScript file of NAME.model (upstream's name)."""
        return model.with_name(f"{model.stem}_compiled.model")

    def final_files(self) -> List[Path]:
        """Files written whole (atomically) once the inputs are validated or training ended."""
        models = [self.model, self.swa_model]
        return [
            self.valid_indices, *models, *map(self.adapter_file, models), *map(self.merged_file, models),
            *map(self.compiled_file, models),
        ]

    def output_folders(self) -> Dict[str, Path]:
        """Each output folder under the flag that sets it."""
        return {"--log_dir": self.log.parent, "--results_dir": self.results.parent,
                "--checkpoints_dir": self.checkpoints, "--model_dir": self.model.parent}

    def lock_files(self) -> List[Path]:
        """One lock in each output folder, named after what this run writes there: NAME_run-SEED
        (log, results, checkpoints), and NAME in the model folder, as NAME.model has no seed."""
        locks = {folder / f"{self.tag}.lock" for folder in (self.log.parent, self.results.parent, self.checkpoints)}
        return sorted(locks | {self.model.with_suffix(".lock")})


def check_output_locations(paths: RunPaths) -> None:
    """Refuse, before any data is read, a run that could not write its outputs (rather than
    fail after training): every output folder writable or creatable, no file name taken by a folder."""
    for flag, folder in paths.output_folders().items():
        reason = unwritable_folder_reason(folder)
        if reason is not None:
            raise UserInputError(f"{flag}: {reason}")
    for path in [paths.log, paths.results, *paths.final_files()]:
        if path.is_dir():
            raise UserInputError(f"Output file '{path}' is a folder: move it away or choose another --name")


def explicit_flag_names(argv: Sequence[str]) -> List[str]:
    return [token[2:].split("=", 1)[0] for token in argv if token.startswith("--")]


def settings_from_flags(settings_class: Type[Settings], args: argparse.Namespace, **values: Any) -> Settings:
    """A settings dataclass of a lower layer, each field from the flag of the same name
    unless given in ``values`` (for flags that need parsing first)."""
    names = [item.name for item in dataclasses.fields(settings_class) if item.name not in values]
    return settings_class(**{name: getattr(args, name) for name in names}, **values)


def data_settings(args: argparse.Namespace) -> DataSettings:
    return settings_from_flags(DataSettings, args, config_type_weights=parse_config_type_weights(args.config_type_weights))


def apply_statistics_file(args: argparse.Namespace) -> None:
    """--statistics_file: its E0s, neighbour count, mean, std and elements replace the flags
    that set them (as upstream), so the model is set up without a pass over the data."""
    if args.statistics_file is None:
        return
    statistics = read_statistics(args.statistics_file)
    if statistics.r_max is not None and statistics.r_max != args.r_max:
        raise UserInputError(
            f"--statistics_file {args.statistics_file} counted neighbours within r_max={statistics.r_max}, "
            f"but --r_max is {args.r_max}: preprocess with the same --r_max"
        )
    args.E0s = str(statistics.atomic_energies)
    args.avg_num_neighbors, args.compute_avg_num_neighbors = statistics.avg_num_neighbors, False
    args.mean, args.std = statistics.mean, statistics.std
    args.atomic_numbers = str(statistics.atomic_numbers)
    logging.info("Statistics from %s: %s", args.statistics_file, statistics)


def finetuning_model(
    args: argparse.Namespace, heads: List[HeadData], argv: Sequence[str], device: torch.device, foundation: Path
) -> MACE:
    """The foundation restricted to the data's elements, with a copy of its head per head of
    the run (--heads, replay fine-tuning), its adapters and each head's E0s."""
    atomic_numbers = run_elements(args, heads)
    given = {flag: getattr(args, flag) for flag in explicit_flag_names(argv) if hasattr(args, flag)}
    model = prepare_foundation(
        foundation, atomic_numbers, device,
        keep_readouts=args.foundation_model_readout, trust_pickle=args.trust_pickle, given_architecture=given,
        foundation_head=args.foundation_head, keep_all_elements=args.foundation_model_elements,
    )
    if args.heads is not None or len(heads) > 1:
        model = expand_heads(model, [head.name for head in heads])
    model = apply_adapters(model, args.adapter_settings, readouts_trained=not args.foundation_model_readout)
    for index, head in enumerate(heads):
        set_finetuning_e0s(
            model, parse_e0s(head.e0s), head.datasets.train, head.datasets.isolated_atom_e0s,
            AtomicNumberTable(atomic_numbers), head=index if len(heads) > 1 else None,
        )
    return model


def run_elements(args: argparse.Namespace, heads: List[HeadData]) -> List[int]:
    """--atomic_numbers, else the elements in every head's data."""
    return dataset_elements(heads[-1].datasets, parse_atomic_numbers(args.atomic_numbers), *(h.datasets for h in heads[:-1]))


def downloads_folder(args: argparse.Namespace, argv: Sequence[str]) -> Optional[Path]:
    """--downloads_dir when typed (published foundation models are fetched there), else None: the cache."""
    return Path(args.downloads_dir) if "downloads_dir" in explicit_flag_names(argv) else None


def replay_requested(args: argparse.Namespace) -> bool:
    """--multiheads_finetuning, which (as upstream) needs a foundation model and its
    pretraining data; without them the run fine-tunes without replay."""
    if not args.multiheads_finetuning:
        return False
    missing = "--foundation_model" if not args.foundation_model else "--pt_train_file" if not args.pt_train_file else None
    if missing is not None:
        logging.warning("--multiheads_finetuning needs %s: training without replayed pretraining data", missing)
        args.multiheads_finetuning = False
        return False
    return True


def apply_replay_settings(args: argparse.Namespace) -> None:
    """Upstream's settings of a replay fine-tune: the universal loss and, unless
    --force_mh_ft_lr, a small learning rate with a slow EMA."""
    args.loss = "universal"
    logging.info("Multi-head replay fine-tuning: heads '%s' (--pt_train_file) and '%s'; --loss universal", PRETRAINING_HEAD, DEFAULT_HEAD)
    if not args.force_mh_ft_lr:
        args.lr, args.ema, args.ema_decay = 1e-4, True, 0.99999
        logging.info("Replay fine-tuning sets --lr 0.0001 --ema --ema_decay 0.99999 (keep yours with --force_mh_ft_lr True)")
    for flag, default in REPLAY_SELECTION_FLAGS.items():
        if getattr(args, flag) != default:
            logging.warning(
                "--%s has no effect on --pt_train_file (as upstream, it selects frames of upstream's downloaded "
                "replay sets): select a subset with python -m mace.cli.fine_tuning_select", flag,
            )


def head_data_settings(args: argparse.Namespace, settings: Mapping[str, Any]) -> DataSettings:
    """A head's data settings: the run's flags, with what its entry of --heads sets."""
    values = {key: settings[key] for key in HEAD_DATA_KEYS if key in settings}
    if "config_type_weights" in values:
        values["config_type_weights"] = parse_config_type_weights(str(values["config_type_weights"]))
    return dataclasses.replace(data_settings(args), **values)


def fine_tuning_heads(args: argparse.Namespace) -> List[HeadData]:
    """The heads the user trains: one ('Default', from the data flags), or those of --heads."""
    heads = parse_heads(args.heads)
    if heads is None:
        return [HeadData(DEFAULT_HEAD, load_datasets(data_settings(args)), args.E0s)]
    loaded = []
    for name, settings in heads.items():
        logging.info("Head '%s':", name)
        e0s = settings.get("E0s", args.E0s)
        loaded.append(HeadData(name, load_datasets(head_data_settings(args, settings)), None if e0s is None else str(e0s)))
    return loaded


def run_heads(args: argparse.Namespace) -> List[HeadData]:
    """The heads of the run in the model's order: the replayed pretraining head first when
    --multiheads_finetuning, then the user's (the last one chooses the checkpoints)."""
    heads = fine_tuning_heads(args)
    if not args.multiheads_finetuning:
        return heads
    settings = replay_settings(data_settings(args), args.pt_train_file, args.pt_valid_file)
    replay = load_datasets(settings)
    replay.train = with_label_weights_scaled(replay.train, args.weight_pt_head, "--weight_pt_head")
    replay.valid = with_label_weights_scaled(replay.valid, args.weight_pt_head, "--weight_pt_head")
    num_finetuning = sum(len(head.datasets.train) for head in heads)
    copies = upsampling_copies(num_finetuning, len(replay.train), args.real_pt_data_ratio_threshold)
    if copies > 1:
        logging.warning(
            "%d fine-tuning against %d replayed configurations (ratio under --real_pt_data_ratio_threshold %g): "
            "each fine-tuning configuration enters an epoch %d times", num_finetuning, len(replay.train),
            args.real_pt_data_ratio_threshold, copies,
        )
    return [HeadData(PRETRAINING_HEAD, replay, "foundation"), *(dataclasses.replace(head, copies=copies) for head in heads)]


def head_scale_and_shift(args: argparse.Namespace, head: HeadData, e0s: Dict[int, float]) -> Tuple[float, float]:
    """--std / --mean where given (e.g. by --statistics_file: no pass over the data), else --scaling of the head's data."""
    given = args.std is not None and args.mean is not None
    scale, shift = (1.0, 0.0) if given else scale_and_shift(args.scaling, head.datasets.train, e0s)
    return (scale if args.std is None else float(args.std)), (shift if args.mean is None else float(args.mean))


def scratch_model(args: argparse.Namespace, heads: List[HeadData], device: torch.device) -> MACE:
    """A fresh model from the architecture flags and the training data's statistics (E0s,
    scale and shift per head; the neighbour count over all heads' data)."""
    atomic_numbers = run_elements(args, heads)
    table = AtomicNumberTable(atomic_numbers)
    e0s = [resolve_e0s(parse_e0s(head.e0s), head.datasets.train, head.datasets.isolated_atom_e0s, table) for head in heads]
    all_train = itertools.chain.from_iterable(head.datasets.train for head in heads)
    avg_neighbors = average_num_neighbors(all_train, args.r_max) if args.compute_avg_num_neighbors else float(args.avg_num_neighbors)
    scales, shifts = zip(*(head_scale_and_shift(args, head, head_e0s) for head, head_e0s in zip(heads, e0s)))
    logging.info("Average number of neighbours %.3f, scale %s, shift %s", avg_neighbors,
                 ", ".join(f"{value:.5f}" for value in scales), ", ".join(f"{value:.5f}" for value in shifts))
    settings = settings_from_flags(ModelSettings, args, radial_MLP=parse_radial_mlp(args.radial_MLP))
    if args.heads is None:
        model = build_model(settings, atomic_numbers, e0s[0], avg_neighbors, scales[0], shifts[0])
    else:
        model = build_model(settings, atomic_numbers, e0s, avg_neighbors, scales, shifts, heads=[head.name for head in heads])
    logging.info("Model: %s trainable parameters", f"{sum(p.numel() for p in model.parameters()):,}")
    return model.to(device)


def build_run_model(
    args: argparse.Namespace, heads: List[HeadData], argv: Sequence[str], device: torch.device, foundation: Optional[Path]
) -> MACE:
    """A model from hyperparameters, or the prepared ``foundation`` file with its adapters."""
    if foundation is not None:
        model = finetuning_model(args, heads, argv, device, foundation)
    else:
        model = scratch_model(args, heads, device)
    frozen = freeze_blocks(model, args.freeze)
    if frozen:
        logging.info("--freeze %d: %s frozen; %s parameters train", args.freeze, ", ".join(frozen), f"{count_trainable(model):,}")
    return model


def training_graphs(model: MACE, heads: List[HeadData]) -> Sequence[Dict[str, torch.Tensor]]:
    """The graphs an epoch trains on: every head's (with its head index), repeated as the head says."""
    if len(heads) == 1 and heads[0].copies == 1:
        return model_graphs(model, heads[0].datasets.train)
    parts = [model_graphs(model, head.datasets.train, index) for index, head in enumerate(heads) for _ in range(head.copies)]
    return torch.utils.data.ConcatDataset(parts)


def build_trainer(
    args: argparse.Namespace, model: MACE, heads: List[HeadData], paths: RunPaths, device: torch.device,
    run_settings: Dict[str, Any], place: ProcessPlace = SINGLE_PROCESS,
) -> Trainer:
    """The training loop of this process; in a data-parallel run it trains on its share of
    every epoch's batches and validates on its shard of the validation set."""
    loss_fn = build_loss(args.loss, args.energy_weight, args.forces_weight, args.stress_weight, args.virials_weight, args.huber_delta)
    swa = None
    if args.swa:
        swa_loss = build_stage_two_loss(
            args.loss, args.swa_energy_weight, args.swa_forces_weight, args.swa_stress_weight, args.swa_virials_weight, args.huber_delta,
        )
        swa = SWASettings(
            start_epoch=args.start_swa, loss_fn=swa_loss, lr=args.swa_lr,
            end_epoch=args.max_num_epochs, schedule=args.swa_lr_schedule,
            reset_optimizer=args.swa_reset_optimizer, warmup_epochs=args.swa_warmup_epochs,
        )
    optimizer_settings = settings_from_flags(OptimizerSettings, args, lr_params_factors=parse_lr_params_factors(args.lr_params_factors))
    optimizer = build_optimizer(model, optimizer_settings)
    ema = ExponentialMovingAverage(trainable_parameters(model.parameters()), decay=args.ema_decay) if args.ema else None
    train_graphs = training_graphs(model, heads)
    return Trainer(
        model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        lr_scheduler=build_scheduler(optimizer, optimizer_settings),
        ema=ema,
        swa=swa,
        train_loader=make_loader(
            train_graphs, args.batch_size, shuffle=True, drop_last=len(train_graphs) > args.batch_size,
            seed=args.seed, num_workers=args.num_workers, pin_memory=args.pin_memory and device.type == "cuda",
            replicas=(place.rank, place.world_size) if args.distributed else None,
        ),
        valid_loaders={
            head.name: make_loader(shard(model_graphs(model, head.datasets.valid, index)), args.valid_batch_size, shuffle=False)
            for index, head in enumerate(heads)
        },
        checkpoints=CheckpointHandler(
            str(paths.checkpoints), paths.tag, keep=args.keep_checkpoints or args.save_all_checkpoints,
            run_settings=run_settings,
        ),
        results_path=paths.results,
        settings=LoopSettings(
            max_num_epochs=args.max_num_epochs,
            eval_interval=args.eval_interval,
            patience=args.patience,
            clip_grad=args.clip_grad,
            error_table=args.error_table,
            compute_stress=args.compute_stress,
        ),
        device=device,
    )


def final_models(trainer: Trainer, paths: RunPaths, device: torch.device) -> Iterator[Tuple[str, Path]]:
    """Load the best checkpoint of each stage (EMA weights) into the model; yield its file name."""
    for stage, (loss, epoch) in sorted(trainer.progress.best.items()):
        state = CheckpointHandler.load(trainer.checkpoints.path(epoch, stage == "swa"), device)
        trainer.model.load_state_dict(state["model"])
        if trainer.ema is not None and state.get("ema") is not None:
            trainer.ema.load_state_dict(state["ema"])
            trainer.ema.copy_to()
        target = paths.swa_model if stage == "swa" else paths.model
        logging.info("Best %s-stage model: epoch %d (validation loss %.4f)", stage, epoch, loss)
        yield stage, target


def kept_foundation(args: argparse.Namespace, foundation: Optional[Path], model: MACE) -> Optional[MACE]:
    """With --keep_foundation_head, the foundation as it was before fine-tuning (its head,
    restricted to the run's elements, its own E0s and readouts), to save beside the model."""
    if foundation is None or not args.keep_foundation_head:
        return None
    return prepare_foundation(
        foundation, model.atomic_numbers.tolist(), torch.device("cpu"), trust_pickle=args.trust_pickle,
        foundation_head=args.foundation_head,
    )


def save_final_model(model: MACE, target: Path, args: argparse.Namespace, kept: Optional[MACE] = None) -> None:
    """NAME.model and NAME_compiled.model; with ``kept`` (the foundation), both carry it as
    head 'foundation' beside the model's own head."""
    to_save = model.to("cpu") if args.save_cpu else model
    if kept is not None:
        kept = kept.to(device=to_save.r_max.device)
        to_save = ModelHeads([kept, to_save], [FOUNDATION_HEAD, model_heads(to_save)[0]])
    save_model(to_save, target)
    logging.info("Saved model to %s", target)
    save_compiled_model(to_save, RunPaths.compiled_file(target))


def save_compiled_model(model: MACE, path: Path) -> None:
    """NAME_compiled.model, for MD codes and torch.jit.load. The model file is already saved,
    so a model TorchScript cannot compile costs this file only (with a warning), not the run."""
    try:
        save_scripted(model, path)
    except Exception as error:  # pylint: disable=broad-except  (whatever TorchScript raises)
        logging.warning("Could not write the TorchScript file %s: %s", path, one_line(error))
        return
    logging.info("Saved TorchScript model to %s", path)


def save_finetuning_outputs(model: MACE, args: argparse.Namespace, foundation: Path, model_path: Path) -> None:
    """Next to NAME.model: NAME_adapter.pt (only trained tensors) and, where the method can
    fold its adapter in (ELoRA, LoRA), NAME_merged.model."""
    settings = args.adapter_settings
    adapter_path = RunPaths.adapter_file(model_path)
    save_adapter(
        model, adapter_path, settings.method, settings.config, foundation,
        readouts_trained=not args.foundation_model_readout, foundation_head=args.foundation_head,
    )
    logging.info("Saved adapter file to %s", adapter_path)
    merge = METHODS[settings.method].merge
    if merge is not None:
        merged_path = RunPaths.merged_file(model_path)
        save_model(merge(copy.deepcopy(model)).to("cpu"), merged_path)
        logging.info("Saved merged %s model to %s", settings.method, merged_path)


def remove_interrupted_writes(paths: RunPaths, checkpoints: CheckpointHandler) -> None:
    """Delete the temporaries a killed run left of its final files and checkpoints (the lock
    guarantees no live run of this name is writing them)."""
    stale = remove_stale_temporaries(paths.final_files())
    if stale:
        logging.info("Removed %d unfinished output file(s) of an interrupted run", len(stale))
    checkpoints.remove_stale_temporaries()


def evaluated_heads(args: argparse.Namespace, heads: List[HeadData]) -> List[Tuple[int, HeadData]]:
    """(index, head) of the heads the final error tables cover: all but --skip_evaluate_heads,
    and always the fine-tuned (last) head."""
    skipped = {name.strip() for name in args.skip_evaluate_heads.split(",")}
    return [(index, head) for index, head in enumerate(heads) if head.name not in skipped or index == len(heads) - 1]


def head_sets(head: HeadData, fine_tuned: bool) -> List[Tuple[str, Sequence]]:
    """The sets of a head's error table; those of a head other than the fine-tuned one are
    named 'HEAD:set', so the results file tells them apart."""
    sets = [("train", head.datasets.train), ("valid", head.datasets.valid)] + list(head.datasets.tests)
    return sets if fine_tuned else [(f"{head.name}:{name}", configs) for name, configs in sets]


def save_and_evaluate(
    args: argparse.Namespace, foundation: Optional[Path], trainer: Trainer, heads: List[HeadData], paths: RunPaths,
    device: torch.device, place: ProcessPlace = SINGLE_PROCESS,
) -> None:
    """Save the best model of each stage (and its adapter files), then log its error table
    per head and write its errors to the results file (in a data-parallel run the main
    process saves and writes; every process evaluates its shard)."""
    request = output_request_for(trainer.loss_fn, args.error_table, args.compute_stress)
    kept = kept_foundation(args, foundation, trainer.model) if place.is_main else None
    for stage, target in final_models(trainer, paths, device):
        if place.is_main:
            save_final_model(trainer.model, target, args, kept)
            trainer.model.to(device)
            if foundation is not None:
                save_finetuning_outputs(trainer.model, args, foundation, target)
        for index, head in evaluated_heads(args, heads):
            fine_tuned = index == len(heads) - 1
            rows = evaluate_sets(
                trainer.model, head_sets(head, fine_tuned), trainer.stage_loss(0), args.valid_batch_size, device, request, index,
            )
            title = f"{stage} model {target.name}" + ("" if len(heads) == 1 else f", head {head.name}")
            log_error_table(title, args.error_table, rows)
            write_final_errors(paths.results, stage, target.name, rows)


def end_dry_run(model: MACE) -> int:
    """--dry_run: log the model that would train, and stop before anything is written."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logging.info("Model (%s trainable of %s parameters):\n%s", f"{trainable:,}", f"{total:,}", model)
    logging.info("Dry run: flags, data and model checked; stopping before training (no model file written)")
    return 0


def process_device(args: argparse.Namespace, place: ProcessPlace) -> torch.device:
    """--device; in a data-parallel run on GPUs, the GPU of this process's local rank."""
    device = select_device(args.device)
    if args.distributed and device.type == "cuda":
        return torch.device("cuda", place.local_rank)
    return device


def train_and_save(args: argparse.Namespace, argv: Sequence[str], paths: RunPaths, place: ProcessPlace = SINGLE_PROCESS) -> int:
    """Validate every input (restart checkpoint, data, model) before writing any output, then
    train (with --dry_run: stop once they are validated)."""
    logging.info("Command line: %s", " ".join(argv))
    checkpoints = CheckpointHandler(str(paths.checkpoints), paths.tag)
    if place.is_main:
        remove_interrupted_writes(paths, checkpoints)
    set_seeds(args.seed)
    torch.set_default_dtype(dtype_from_name(args.default_dtype))
    device = process_device(args, place)
    # The number of processes shapes the batches, so a restart must keep it too.
    apply_statistics_file(args)
    if replay_requested(args):
        apply_replay_settings(args)
    run_settings = {**defining_settings(args), "world_size": place.world_size}
    checkpoint = (
        checkpoint_to_resume(checkpoints, run_settings, device, args.adapter_settings.older_record())
        if args.restart_latest
        else None
    )
    heads = run_heads(args)
    datasets = heads[-1].datasets
    # Resolved (downloaded, its hash recorded or checked) once: the adapter files name it too.
    foundation = resolve_foundation_path(args.foundation_model, downloads_folder(args, argv)) if args.foundation_model else None
    model = build_run_model(args, heads, argv, device, foundation)
    trainer = build_trainer(args, model, heads, paths, device, run_settings, place)
    if args.dry_run:
        return end_dry_run(model)
    if checkpoint is not None:
        resume(trainer, checkpoint)
    if place.is_main:
        write_valid_indices(datasets, paths.valid_indices, args.train_file)
    if checkpoint is None:  # a resumed run keeps the first line of the run it continues
        write_parameter_counts(paths.results, args.adapter_settings.method, count_trainable(model), sum(p.numel() for p in model.parameters()))
    try:
        trainer.run()
    except TrainingDivergedError as error:
        logging.error(str(error))
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    save_and_evaluate(args, foundation, trainer, heads, paths, device, place)
    logging.info("Done")
    return 0


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Check the output folders, lock them against a second run of this name, then train.

    TorchScript (e3nn's compiled kernels) runs unoptimised: the optimising executor changes
    a function's numerics after its first calls (profiling runs, then graphs with their own
    derivative formulas), so a resumed process, whose first calls fall at a later epoch,
    would drift in the last bits from the run it replaces; unoptimised, every call computes alike.
    """
    paths = RunPaths.from_args(args)
    check_output_locations(paths)
    keep_freed_memory()
    with data_parallel_job(args) as place, torch.jit.optimized_execution(False):
        if not place.is_main:  # the main process locks, logs and writes for the job
            setup_logging("WARNING", None)
            return train_and_save(args, argv, paths, place)
        with RunLock(paths.lock_files()) as lock:
            setup_logging(args.log_level, paths.log)
            for stale in lock.taken_over:
                logging.warning("Took over lock file %s, left by a run that no longer exists", stale)
            if args.distributed:
                logging.info("Data-parallel training: %d processes (--launcher %s)", place.world_size, args.launcher)
            return train_and_save(args, argv, paths, place)


@contextlib.contextmanager
def data_parallel_job(args: argparse.Namespace) -> Iterator[ProcessPlace]:
    """With --distributed, join the launcher's process group for the run and leave it after."""
    if not args.distributed:
        yield SINGLE_PROCESS
        return
    place = process_from_environment(args.launcher)
    with joined_process_group(place, args.device):
        yield place


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    sys.exit(run_cli(lambda: run(args, argv)))


if __name__ == "__main__":
    main()
