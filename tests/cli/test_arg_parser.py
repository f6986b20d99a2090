"""Tests of the run_train command line: upstream flags, overrides, rejections, config files
and the adapter knobs shared between flags and environment variables."""
import argparse
import json
from typing import Dict, List, Optional

import pytest

from benchmarks.protocols import command_flags, seed_command
from mace.cli import arg_parser
from mace.adapters.config import LoRAConfig, MMEAConfig
from mace.adapters.settings import AdapterSettings
from mace.cli.arg_parser import (
    RESET_WARMUP_EPOCHS,
    UserInputError,
    adapter_settings,
    build_parser,
    float_or_none,
    hidden_irreps_from_channels,
    parse_args,
    parse_atomic_numbers,
    parse_config_type_weights,
    parse_e0s,
    parse_lr_params_factors,
    parse_radial_mlp,
    str2bool,
)

MINIMAL = ["--name", "run", "--train_file", "train.xyz"]

# Upstream 0.3.5 flag table (docs/compat.md section 2): flag -> default.
UPSTREAM_DEFAULTS = {
    "config": None, "name": None, "seed": 123, "log_dir": "logs", "model_dir": ".",
    "checkpoints_dir": "checkpoints", "results_dir": "results", "downloads_dir": "downloads",
    "device": "cpu", "default_dtype": "float64", "distributed": False, "log_level": "INFO",
    "error_table": "PerAtomRMSE", "model": "MACE", "r_max": 5.0, "radial_type": "bessel",
    "num_radial_basis": 8, "num_cutoff_basis": 5, "pair_repulsion": False,
    "distance_transform": "None",
    "interaction": "RealAgnosticResidualInteractionBlock",
    "max_ell": 3, "correlation": 3, "num_interactions": 2, "MLP_irreps": "16x0e",
    "radial_MLP": "[64, 64, 64]", "hidden_irreps": "128x0e + 128x1o", "num_channels": None,
    "max_L": None, "gate": "silu", "scaling": "rms_forces_scaling", "avg_num_neighbors": 1,
    "compute_avg_num_neighbors": True, "compute_stress": False, "compute_forces": True,
    "train_file": None, "valid_file": None, "valid_fraction": 0.1, "test_file": None,
    "test_dir": None, "multi_processed_test": False, "num_workers": 0, "pin_memory": True,
    "atomic_numbers": None, "mean": None, "std": None, "statistics_file": None, "E0s": None,
    "keep_isolated_atoms": False, "energy_key": "energy", "forces_key": "forces",
    "virials_key": "virials", "stress_key": "stress", "dipole_key": "dipole",
    "charges_key": "charges", "loss": "weighted", "forces_weight": 100.0,
    "swa_forces_weight": 100.0, "energy_weight": 1.0, "swa_energy_weight": 1000.0,
    "virials_weight": 1.0, "swa_virials_weight": 10.0, "stress_weight": 1.0,
    "swa_stress_weight": 10.0, "dipole_weight": 1.0, "swa_dipole_weight": 1.0,
    "config_type_weights": '{"Default":1.0}', "huber_delta": 0.01, "optimizer": "adam",
    "batch_size": 10, "valid_batch_size": 10, "lr": 0.01, "swa_lr": 0.001,
    "weight_decay": 5e-07, "amsgrad": True, "beta": 0.9, "scheduler": "ReduceLROnPlateau", "lr_factor": 0.8,
    "scheduler_patience": 50, "lr_scheduler_gamma": 0.9993, "swa": False, "start_swa": None,
    "ema": False, "ema_decay": 0.99, "max_num_epochs": 2048, "patience": 2048,
    "foundation_model": None, "foundation_model_readout": True, "trust_pickle": False, "eval_interval": 2,
    "keep_checkpoints": False, "save_all_checkpoints": False, "restart_latest": False,
    "save_cpu": False, "clip_grad": 10.0, "wandb": False, "wandb_project": "",
    "wandb_entity": "", "wandb_name": "",
    "wandb_log_hypers": ["num_channels", "max_L", "correlation", "lr", "swa_lr", "weight_decay",
                         "batch_size", "max_num_epochs", "start_swa", "energy_weight",
                         "forces_weight"],
}

NEWER_BLOCKS = ["RealAgnosticDensityInteractionBlock", "RealAgnosticDensityResidualInteractionBlock",
                "RealAgnosticResidualNonLinearInteractionBlock"]
UPSTREAM_CHOICES = {
    "device": ["cpu", "cuda", "mps"],
    "default_dtype": ["float32", "float64"],
    "error_table": ["PerAtomRMSE", "TotalRMSE", "PerAtomRMSEstressvirials", "PerAtomMAE",
                    "TotalMAE", "DipoleRMSE", "DipoleMAE", "EnergyDipoleRMSE"],
    "model": ["BOTNet", "MACE", "ScaleShiftMACE", "ScaleShiftBOTNet", "AtomicDipolesMACE",
              "EnergyDipolesMACE"],
    "radial_type": ["bessel", "gaussian", "chebyshev"],
    "distance_transform": ["None", "Agnesi", "Soft"],
    # the interaction blocks as upstream 0.3.16 lists them
    "interaction": ["RealAgnosticResidualInteractionBlock",
                    "RealAgnosticAttResidualInteractionBlock", "RealAgnosticInteractionBlock",
                    *NEWER_BLOCKS],
    "interaction_first": ["RealAgnosticResidualInteractionBlock", "RealAgnosticInteractionBlock",
                          *NEWER_BLOCKS],
    "gate": ["silu", "tanh", "abs", "None"],
    "scaling": ["std_scaling", "rms_forces_scaling", "no_scaling"],
    "loss": ["ef", "weighted", "forces_only", "virials", "stress", "dipole", "huber", "universal",
             "energy_forces_dipole"],
    "optimizer": ["adam", "adamw"],
}

# Switches of the table whose value, once given, differs from the default ("on when given"
# except foundation_model_readout, which turns off); --amsgrad is on either way.
SWITCH_WHEN_GIVEN = {
    "distributed": True, "pair_repulsion": True, "swa": True, "ema": True,
    "keep_checkpoints": True, "save_all_checkpoints": True, "restart_latest": True,
    "save_cpu": True, "wandb": True, "foundation_model_readout": False, "amsgrad": True,
    "trust_pickle": True,
}


def _parse(extra: List[str], environ: Optional[Dict[str, str]] = None) -> argparse.Namespace:
    """parse_args on the minimal command plus ``extra``, isolated from the real environment."""
    return parse_args(MINIMAL + extra, environ={} if environ is None else environ)


def _rejection(capsys: pytest.CaptureFixture, argv: List[str], environ=None) -> str:
    """Run parse_args expecting a usage error; return the error text."""
    with pytest.raises(SystemExit) as excinfo:
        parse_args(argv, environ={} if environ is None else environ)
    assert excinfo.value.code == 2
    return capsys.readouterr().err


# ----------------------------------------------------------------------------- flag table


def test_every_upstream_flag_has_its_default():
    raw = vars(build_parser().parse_args([]))
    for dest, default in UPSTREAM_DEFAULTS.items():
        assert dest in raw, f"--{dest} missing"
        assert raw[dest] == default, f"--{dest}: {raw[dest]!r} != {default!r}"
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        assert type(raw[dest]) is type(default) or numeric, dest


def test_validated_minimal_command_keeps_defaults():
    args = _parse([])
    for dest, default in UPSTREAM_DEFAULTS.items():
        if dest in ("name", "train_file"):
            continue
        assert getattr(args, dest) == default, dest


@pytest.mark.parametrize(
    "extra, expected",
    [([], "RealAgnosticInteractionBlock"),
     (["--model", "ScaleShiftMACE"], "RealAgnosticResidualInteractionBlock"),
     (["--interaction_first", "RealAgnosticResidualInteractionBlock"], "RealAgnosticResidualInteractionBlock")],
)
def test_first_interaction_block_follows_the_model_as_upstream(extra, expected):
    assert build_parser().parse_args([]).interaction_first is None
    assert _parse(extra).interaction_first == expected


def test_upstream_choices_are_accepted_by_the_parser():
    actions = {a.dest: a for a in build_parser()._actions}
    for dest, choices in UPSTREAM_CHOICES.items():
        assert list(actions[dest].choices) == choices, dest


@pytest.mark.parametrize("dest,value", sorted(SWITCH_WHEN_GIVEN.items()))
def test_switch_behaviour(dest, value):
    args = build_parser().parse_args([f"--{dest}"])
    assert getattr(args, dest) is value


def test_invalid_choice_is_a_usage_error(capsys):
    err = _rejection(capsys, MINIMAL + ["--optimizer", "sgd"])
    assert "--optimizer" in err


@pytest.mark.parametrize(
    "dest", ["compute_avg_num_neighbors", "compute_stress", "compute_forces", "pin_memory",
             "keep_isolated_atoms"],
)
@pytest.mark.parametrize(
    "text,value", [("True", True), ("false", False), ("1", True), ("no", False)]
)
def test_boolean_value_flags_read_words(dest, text, value):
    assert getattr(build_parser().parse_args(MINIMAL + [f"--{dest}", text]), dest) is value


def test_boolean_value_flag_rejects_other_words(capsys):
    err = _rejection(capsys, MINIMAL + ["--compute_stress", "maybe"])
    assert "--compute_stress" in err


def test_str2bool_and_float_or_none():
    assert str2bool("YES") is True and str2bool("off") is False and str2bool(True) is True
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("2")
    assert float_or_none("None") is None and float_or_none("100") == 100.0
    assert _parse(["--clip_grad", "None"]).clip_grad is None
    assert _parse(["--clip_grad", "100"]).clip_grad == 100.0


# ----------------------------------------------------------------------------- seed command


def test_seed_command_parses_on_cpu():
    """The seed's command (benchmarks/protocols.py; tests/test_benchmark.py checks it against the README)."""
    args = parse_args(command_flags(seed_command(device="cpu")), environ={})
    assert args.hidden_irreps == "128x0e + 128x1o"
    assert (args.num_channels, args.max_L) == (128, 1)
    assert args.device == "cpu"
    assert args.energy_key == "REF_energy" and args.forces_key == "REF_forces"
    assert args.ema and args.swa and args.save_cpu and args.amsgrad
    assert (args.start_swa, args.max_num_epochs, args.ema_decay) == (400, 500, 0.995)
    assert args.weight_decay == 1e-8 and args.clip_grad == 100.0 and args.lr == 0.005
    assert args.E0s == "average" and args.error_table == "TotalMAE" and args.loss == "ef"
    settings = adapter_settings(args, environ={})
    assert settings == AdapterSettings(
        method="mmea", config=MMEAConfig(rank=16, std=0.001, init=None, phi="res", lora_rank=16, lora_alpha=16.0)
    )
    assert args.adapter_settings == settings


# ----------------------------------------------------------------------------- channel override


@pytest.mark.parametrize(
    "extra,expected",
    [
        ([], "128x0e + 128x1o"),
        (["--num_channels", "128", "--max_L", "1"], "128x0e + 128x1o"),
        (["--num_channels", "64"], "64x0e + 64x1o"),
        (["--max_L", "2"], "128x0e + 128x1o + 128x2e"),
        (["--max_L", "0"], "128x0e"),
        (["--num_channels", "8", "--max_L", "3"], "8x0e + 8x1o + 8x2e + 8x3o"),
        (["--hidden_irreps", "32x0e + 16x1o + 16x2e", "--num_channels", "8"],
         "8x0e + 8x1o + 8x2e"),
        (["--hidden_irreps", "32x0e + 16x1o + 16x2e", "--max_L", "1"], "32x0e + 32x1o"),
        (["--hidden_irreps", "16x0e"], "16x0e"),
    ],
)
def test_num_channels_max_L_override(extra, expected):
    assert _parse(extra).hidden_irreps == expected


def test_override_fills_both_values_and_untouched_when_absent():
    args = _parse(["--max_L", "2"])
    assert (args.num_channels, args.max_L) == (128, 2)
    args = _parse(["--hidden_irreps", "32x0e + 32x1o"])
    assert args.num_channels is None and args.max_L is None


def test_hidden_irreps_from_channels_parity():
    assert hidden_irreps_from_channels(4, 4) == "4x0e + 4x1o + 4x2e + 4x3o + 4x4e"


@pytest.mark.parametrize(
    "extra,flag",
    [(["--num_channels", "0"], "--num_channels"), (["--max_L", "-1"], "--max_L"),
     (["--hidden_irreps", "128x0e+", "--max_L", "1"], "--hidden_irreps"),
     (["--hidden_irreps", "nonsense"], "--hidden_irreps"),
     (["--MLP_irreps", "16y0e"], "--MLP_irreps")],
)
def test_override_and_irreps_errors(capsys, extra, flag):
    assert flag in _rejection(capsys, MINIMAL + extra)


# ----------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    "extra,flag",
    [
        (["--model", "BOTNet"], "--model"),
        (["--model", "ScaleShiftBOTNet"], "--model"),
        (["--model", "AtomicDipolesMACE"], "--model"),
        (["--model", "EnergyDipolesMACE"], "--model"),
        (["--loss", "dipole"], "--loss"),
        (["--loss", "energy_forces_dipole"], "--loss"),
        (["--error_table", "DipoleRMSE"], "--error_table"),
        (["--error_table", "DipoleMAE"], "--error_table"),
        (["--error_table", "EnergyDipoleRMSE"], "--error_table"),
        (["--wandb"], "--wandb"),
        (["--device", "mps"], "--device"),
        (["--interaction", "RealAgnosticAttResidualInteractionBlock"], "--interaction"),
        (["--multi_processed_test", "True"], "--multi_processed_test"),
        (["--r_max", "0"], "--r_max"),
        (["--r_max", "-1.5"], "--r_max"),
        (["--batch_size", "0"], "--batch_size"),
        (["--valid_batch_size", "-2"], "--valid_batch_size"),
        (["--max_num_epochs", "0"], "--max_num_epochs"),
        (["--lr", "0"], "--lr"),
        (["--valid_fraction", "0"], "--valid_fraction"),
        (["--valid_fraction", "1"], "--valid_fraction"),
        (["--valid_fraction", "1.5"], "--valid_fraction"),
        (["--ema_decay", "1.0"], "--ema_decay"),
        (["--ema_decay", "0"], "--ema_decay"),
        (["--beta", "1"], "--beta"),
        (["--beta", "-0.1"], "--beta"),
        (["--swa", "--start_swa", "-1"], "--start_swa"),
        (["--scheduler", "CosineAnnealing"], "--scheduler"),
        (["--log_level", "LOUD"], "--log_level"),
        (["--radial_MLP", "[64, -1]"], "--radial_MLP"),
        (["--radial_MLP", "[]"], "--radial_MLP"),
        (["--radial_MLP", "wide"], "--radial_MLP"),
        (["--atomic_numbers", "[1, 200]"], "--atomic_numbers"),
        (["--config_type_weights", "[1, 2]"], "--config_type_weights"),
        (["--E0s", "no_such_file.json"], "--E0s"),
        (["--E0s", "{1: 'x'}"], "--E0s"),
    ],
)
def test_rejections_exit_2_naming_the_flag(capsys, extra, flag):
    err = _rejection(capsys, MINIMAL + extra)
    assert flag in err
    assert err.count("error:") == 1


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--lr=inf"], "--lr must be a finite positive number, got inf"),
        (["--swa_lr=nan"], "--swa_lr must be a finite positive number, got nan"),
        (["--forces_weight=nan"], "--forces_weight must be a finite non-negative number, got nan"),
        (["--swa_energy_weight=-1"], "--swa_energy_weight must be a finite non-negative number"),
        (["--energy_weight=inf"], "--energy_weight must be a finite non-negative number, got inf"),
        (["--weight_decay=-1e-5"], "--weight_decay must be a finite non-negative number"),
        (["--r_max=0.01"], "--r_max must be at least 0.5 (Angstrom): no chemical bond is shorter, got 0.01"),
        (["--r_max=inf"], "--r_max must be at least 0.5"),
        (["--seed=-1"], "--seed must be between 0 and 2**32 - 1"),
        (["--seed=4294967296"], "--seed must be between 0 and 2**32 - 1"),
        (["--clip_grad=inf"], "--clip_grad must be a finite positive number, got inf"),
        (["--lr_factor=1"], "--lr_factor must be strictly between 0 and 1"),
        (["--lr_scheduler_gamma=0"], "--lr_scheduler_gamma must be a finite positive number"),
        (["--scheduler_patience=-1"], "--scheduler_patience must be a finite non-negative number"),
        (["--huber_delta=nan"], "--huber_delta must be a finite positive number"),
        (["--ema_decay=nan"], "--ema_decay must be strictly between 0 and 1"),
        (["--avg_num_neighbors=0"], "--avg_num_neighbors must be a finite positive number"),
        (["--mean=nan"], "--mean must be a finite number, got nan"),
        (["--std=-inf"], "--std must be a finite positive number"),
        (["--adapter_lr_factor=inf"], "--adapter_lr_factor must be a finite positive number"),
        (["--low_rank_b_lr_factor=0"], "--low_rank_b_lr_factor must be a finite positive number"),
        (["--swa_warmup_epochs=-1"], "--swa_warmup_epochs must be a finite non-negative number"),
        (["--E0s={1: 1e999}"], "--E0s: the dict literal holds an energy that is NaN or inf"),
        (["--config_type_weights={'Default': -1}"], "--config_type_weights: weights must be finite and non-negative"),
        (["--config_type_weights={'Default': 1e999}"], "--config_type_weights: weights must be finite"),
    ],
)
def test_non_finite_and_out_of_range_numbers_are_refused(capsys, extra, expected):
    err = _rejection(capsys, MINIMAL + extra)
    assert expected in err and err.count("error:") == 1


def test_the_edges_of_the_numeric_ranges_are_accepted():
    args = _parse(["--r_max=0.5", "--seed=0", "--forces_weight=0", "--weight_decay=0", "--mean=-3.5",
                   "--scheduler_patience=0", "--start_swa=0", "--swa"])
    assert (args.r_max, args.seed, args.forces_weight) == (0.5, 0, 0.0)
    assert _parse(["--seed=4294967295"]).seed == 2**32 - 1
    assert _parse(["--beta=0"]).beta == 0.0


def test_upstream_0316_architecture_flags_have_its_defaults_and_are_accepted():
    defaults = _parse([])
    assert (defaults.apply_cutoff, defaults.use_last_readout_only) == (True, False)
    assert defaults.use_embedding_readout is False
    args = _parse(["--pair_repulsion", "--distance_transform", "Soft", "--radial_type", "chebyshev",
                   "--apply_cutoff", "False", "--use_last_readout_only", "True", "--use_embedding_readout=True",
                   "--interaction_first", NEWER_BLOCKS[0], "--interaction", NEWER_BLOCKS[2]])
    assert (args.pair_repulsion, args.distance_transform, args.radial_type) == (True, "Soft", "chebyshev")
    assert (args.apply_cutoff, args.use_last_readout_only, args.use_embedding_readout) == (False, True, True)
    assert (args.interaction_first, args.interaction) == (NEWER_BLOCKS[0], NEWER_BLOCKS[2])


def test_interaction_first_att_block_is_not_a_choice(capsys):
    extra = ["--interaction_first", "RealAgnosticAttResidualInteractionBlock"]
    err = _rejection(capsys, MINIMAL + extra)
    assert "--interaction_first" in err


@pytest.mark.parametrize("missing", ["--name", "--train_file"])
def test_required_flags(capsys, missing):
    argv = list(MINIMAL)
    index = argv.index(missing)
    del argv[index:index + 2]
    err = _rejection(capsys, argv)
    assert f"{missing} is required" in err


def test_unsupported_message_says_why(capsys):
    err = _rejection(capsys, MINIMAL + ["--model", "BOTNet"])
    assert "not supported" in err and "MACE" in err


def test_supported_choices_pass():
    for extra in (["--model", "ScaleShiftMACE"], ["--loss", "huber"], ["--loss", "stress"],
                  ["--loss", "virials"], ["--loss", "forces_only"],
                  ["--interaction", "RealAgnosticInteractionBlock"],
                  ["--error_table", "PerAtomRMSEstressvirials"], ["--scheduler", "ExponentialLR"],
                  ["--log_level", "debug"], ["--E0s", "{1: -13.6, 8: -2041.0}"]):
        _parse(extra)


def test_cuda_without_gpu_is_rejected(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _rejection(capsys, MINIMAL + ["--device", "cuda"])
    assert "--device cuda" in err and "is_available" in err


def test_cuda_with_gpu_is_accepted(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _parse(["--device", "cuda"]).device == "cuda"


# ----------------------------------------------------------------------------- SWA


def test_swa_start_defaults_to_three_quarters():
    assert _parse(["--swa", "--max_num_epochs", "500"]).start_swa == 375
    assert _parse(["--max_num_epochs", "500"]).start_swa is None


FORCES_FALL = ["--forces_weight", "1000", "--swa_forces_weight", "100"]  # the seed's commands


@pytest.mark.parametrize("extra, expected", [
    ([], False),
    (["--foundation_model", "fm.model"] + FORCES_FALL, True),
    (["--foundation_model", "fm.model", "--forces_weight", "1000"], True),
    (["--foundation_model", "fm.model", "--adapter", "elora"] + FORCES_FALL, True),
    (["--foundation_model", "fm.model", "--adapter", "none"] + FORCES_FALL, True),
    (["--foundation_model", "fm.model", "--adapter", "lora"] + FORCES_FALL, True),
    (["--foundation_model", "fm.model", "--lora"] + FORCES_FALL, True),
    (["--foundation_model", "fm.model"], False),  # forces 100 -> 100, upstream's defaults
    (["--foundation_model", "fm.model", "--loss", "weighted", "--forces_weight", "1"], False),
    (["--foundation_model", "fm.model", "--swa_reset_optimizer", "False"] + FORCES_FALL, False),
    (["--foundation_model", "fm.model", "--adapter", "lora", "--swa_reset_optimizer", "no"] + FORCES_FALL, False),
    (["--foundation_model", "fm.model", "--swa_reset_optimizer", "yes"], True),
    (["--adapter", "none"] + FORCES_FALL, False),
    (["--swa_reset_optimizer", "yes"], True),
])
def test_swa_stage_resets_the_optimiser_by_default_when_fine_tuning_with_falling_force_weight(extra, expected):
    assert _parse(["--swa"] + extra).swa_reset_optimizer is expected


@pytest.mark.parametrize("extra, expected", [
    (["--foundation_model", "fm.model"] + FORCES_FALL, RESET_WARMUP_EPOCHS),
    (["--foundation_model", "fm.model", "--swa_warmup_epochs", "0"] + FORCES_FALL, 0),
    (["--foundation_model", "fm.model", "--swa_reset_optimizer", "False"] + FORCES_FALL, 0),
    (["--foundation_model", "fm.model", "--adapter", "lora"] + FORCES_FALL, RESET_WARMUP_EPOCHS),
    (["--foundation_model", "fm.model", "--adapter", "lora", "--swa_reset_optimizer", "no"] + FORCES_FALL, 0),
    (["--foundation_model", "fm.model"], 0),
    ([], 0),
    (["--swa_warmup_epochs", "2"], 2),
])
def test_swa_warmup_follows_the_optimiser_reset_unless_given(extra, expected):
    assert RESET_WARMUP_EPOCHS > 0
    assert _parse(["--swa"] + extra).swa_warmup_epochs == expected


def test_swa_that_never_starts_only_warns():
    with pytest.warns(UserWarning, match="SWA will never start"):
        args = _parse(["--swa", "--start_swa", "600", "--max_num_epochs", "500"])
    assert args.start_swa == 600


# ----------------------------------------------------------------------------- --config


def test_yaml_config_values_are_defaults_the_command_line_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "name: from-file\ntrain_file: train.xyz\nlr: 0.002\nmax_num_epochs: 7\nema: true\n"
        "weight_decay: 1e-8\nradial_MLP: [32, 32]\nE0s: {1: -13.6, 8: -2041.0}\n"
        "num_channels: 32\nfoundation_model_readout: false\ncompute_stress: true\n"
        "clip_grad: null\n"
    )
    args = parse_args(["--config", str(config), "--lr", "0.01", "--name", "cli"], environ={})
    assert args.lr == 0.01 and args.name == "cli"  # command line wins
    assert args.max_num_epochs == 7 and args.ema is True and args.train_file == "train.xyz"
    assert args.weight_decay == 1e-8  # YAML 1.1 reads 1e-8 as text; the flag type converts it
    assert parse_radial_mlp(args.radial_MLP) == [32, 32]
    assert parse_e0s(args.E0s) == {1: -13.6, 8: -2041.0}
    assert args.hidden_irreps == "32x0e + 32x1o"
    assert args.foundation_model_readout is False and args.compute_stress is True
    assert args.clip_grad is None


def test_json_config_and_cli_override_of_channels(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"--name": "j", "train_file": "t.xyz", "num_channels": 16,
                                  "max_L": 2, "model": "ScaleShiftMACE"}))
    args = parse_args(["--config", str(config), "--max_L", "0"], environ={})
    assert args.model == "ScaleShiftMACE" and args.hidden_irreps == "16x0e"


def test_config_missing_file_names_it(capsys, tmp_path):
    missing = str(tmp_path / "nope.yaml")
    err = _rejection(capsys, MINIMAL + ["--config", missing])
    assert missing in err


def test_config_unknown_key_names_it(capsys, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("max_num_epoch: 3\n")
    err = _rejection(capsys, MINIMAL + ["--config", str(config)])
    assert "'max_num_epoch'" in err and str(config) in err and "max_num_epochs" in err


@pytest.mark.parametrize("body,key", [("batch_size: 2.5\n", "batch_size"),
                                      ("model: BOTNet2\n", "model"),
                                      ("ema: 3\n", "ema"),
                                      ("- just\n- a list\n", "mapping")])
def test_config_bad_values_are_named(capsys, tmp_path, body, key):
    config = tmp_path / "bad.yaml"
    config.write_text(body)
    assert key in _rejection(capsys, MINIMAL + ["--config", str(config)])


def test_config_value_still_validated(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: BOTNet\n")
    assert "--model BOTNet" in _rejection(capsys, MINIMAL + ["--config", str(config)])


# ----------------------------------------------------------------------------- adapters


def _settings(extra: List[str], environ: Dict[str, str]) -> AdapterSettings:
    return adapter_settings(_parse(extra, environ), environ=environ)


FM = ["--foundation_model", "fm.model"]


def test_adapter_method_defaults():
    assert _settings([], {}).method == "none"
    assert _settings(FM, {}).method == "mmea"
    assert _settings(FM + ["--adapter", "elora"], {}).method == "elora"
    assert _settings(FM + ["--adapter", "none"], {}).method == "none"


@pytest.mark.parametrize("method", ["mmea", "elora"])
def test_adapter_without_foundation_model_is_rejected(capsys, method):
    err = _rejection(capsys, MINIMAL + ["--adapter", method])
    assert f"--adapter {method}" in err and "--foundation_model" in err


def test_mmea_rank_env_and_flag_precedence():
    assert _settings(FM, {}).config.rank == 16
    assert _settings(FM, {"MMEA_RANK": "32"}).config.rank == 32
    assert _settings(FM + ["--mmea_rank", "8"], {"MMEA_RANK": "32"}).config.rank == 8
    assert _settings(FM, {"MMEA_RANK": " "}).config.rank == 16


def test_mmea_phi_env_and_flag_precedence():
    assert _settings(FM, {}).config.phi == "res"
    assert _settings(FM, {"MMEA_PHI": "exp"}).config.phi == "exp"
    assert _settings(FM + ["--mmea_phi", "res"], {"MMEA_PHI": "exp"}).config.phi == "res"


@pytest.mark.parametrize(
    "extra,environ,init,std",
    [
        ([], {}, "normal", 0.001),
        (["--mmea_init", "default"], {}, "default", 0.001),
        (["--mmea_init", "default"], {"MMEA_STD": "0"}, "default", 0.0),
        ([], {"MMEA_STD": "0.001"}, "normal", 0.001),
        ([], {"MMEA_STD": "0"}, "zero", 0.0),
        (["--mmea_std", "0.01"], {"MMEA_STD": "0.001"}, "normal", 0.01),
        (["--mmea_init", "normal"], {}, "normal", 0.001),
        (["--mmea_init", "normal", "--mmea_std", "0.05"], {}, "normal", 0.05),
        (["--mmea_init", "zero"], {"MMEA_STD": "0.001"}, "zero", 0.001),
    ],
)
def test_mmea_init_resolution(extra, environ, init, std):
    settings = _settings(FM + extra, environ)
    assert settings.config.scalar_init == init and settings.config.std == std


def test_reference_3bpa_environment():
    settings = _settings(FM, {"MMEA_RANK": "32", "MMEA_STD": "0.001"})
    assert (settings.config.rank, settings.config.std, settings.config.scalar_init) == (32, 0.001, "normal")


@pytest.mark.parametrize(
    "environ,extra,name",
    [
        ({"MMEA_RANK": "abc"}, [], "MMEA_RANK"),
        ({"MMEA_RANK": "0"}, [], "MMEA_RANK"),
        ({"MMEA_STD": "small"}, [], "MMEA_STD"),
        ({"MMEA_STD": "-0.1"}, [], "MMEA_STD"),
        ({"MMEA_PHI": "tanh"}, [], "MMEA_PHI"),
        ({}, ["--mmea_rank", "0"], "--mmea_rank"),
        ({}, ["--mmea_std", "-1"], "--mmea_std"),
        ({}, ["--mmea_init", "normal", "--mmea_std", "0"], "--mmea_init"),
        ({}, ["--elora_rank", "0"], "--elora_rank"),
        ({}, ["--elora_alpha", "0"], "--elora_alpha"),
        ({}, ["--elora_alpha", "inf"], "--elora_alpha must be a finite positive number, got inf"),
        ({}, ["--adapter", "lora", "--lora_rank", "0"], "--lora_rank"),
        ({}, ["--lora", "--lora_alpha", "-1"], "--lora_alpha must be a finite positive number"),
        ({}, ["--mmea_std", "inf"], "--mmea_std must be a finite non-negative number, got inf"),
        ({"MMEA_STD": "inf"}, [], "MMEA_STD must be a finite non-negative number"),
    ],
)
def test_bad_adapter_values_name_their_source(capsys, environ, extra, name):
    args = build_parser().parse_args(MINIMAL + FM + extra)
    with pytest.raises(UserInputError, match=name):
        adapter_settings(args, environ=environ)
    assert name in _rejection(capsys, MINIMAL + FM + extra, environ)


def test_flag_hides_a_bad_environment_value():
    assert _settings(FM + ["--mmea_rank", "4"], {"MMEA_RANK": "abc"}).config.rank == 4


def test_resolve_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("MMEA_RANK", "24")
    args = build_parser().parse_args(MINIMAL + FM)
    assert adapter_settings(args).config.rank == 24


# ----------------------------------------------------------------------------- value readers


def test_value_readers(tmp_path):
    assert parse_radial_mlp("[64, 64, 64]") == [64, 64, 64]
    assert parse_atomic_numbers("[8, 1, 6, 1]") == [1, 6, 8]
    assert parse_atomic_numbers(None) is None
    assert parse_config_type_weights('{"Default":1.0}') == {"Default": 1.0}
    assert parse_e0s(None) is None and parse_e0s("average") == "average"
    e0s_file = tmp_path / "e0s.json"
    e0s_file.write_text('{"1": -13.6, "8": -2041.0}')
    assert parse_e0s(str(e0s_file)) == {1: -13.6, 8: -2041.0}
    assert _parse(["--E0s", str(e0s_file)]).E0s == str(e0s_file)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(UserInputError, match="--E0s"):
        parse_e0s(str(bad))


def test_upstream_s_stage_two_names_set_the_swa_flags() -> None:
    args = _parse(["--stage_two", "--start_stage_two", "7", "--stage_two_lr", "0.002",
                   "--stage_two_forces_weight", "3", "--stage_two_energy_weight", "40"])
    assert (args.swa, args.start_swa, args.swa_lr) == (True, 7, 0.002)
    assert (args.swa_forces_weight, args.swa_energy_weight) == (3.0, 40.0)


def test_lr_params_factors_read_upstream_s_json_and_name_what_is_wrong() -> None:
    assert parse_lr_params_factors(_parse([]).lr_params_factors) == {
        "embedding_lr_factor": 1.0, "interactions_lr_factor": 1.0, "products_lr_factor": 1.0, "readouts_lr_factor": 1.0,
    }
    assert parse_lr_params_factors('{"readouts_lr_factor": 0.1}') == {"readouts_lr_factor": 0.1}
    for text, message in [("{readouts: 1}", "not a JSON dict"), ("[1]", "expected a JSON dict"),
                          ('{"head_lr_factor": 1}', "unknown key"), ('{"products_lr_factor": -1}', "factors must be finite and non-negative")]:
        with pytest.raises(UserInputError, match="--lr_params_factors: " + message):
            parse_lr_params_factors(text)


def test_help_mentions_adapter_flags(capsys):
    with pytest.raises(SystemExit) as excinfo:
        build_parser().parse_args(["--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--adapter", "--mmea_rank", "--mmea_std", "--mmea_init", "--mmea_phi",
                 "--elora_rank", "--elora_alpha", "MMEA_RANK", "--lora ", "--lora_rank", "--lora_alpha"):
        assert flag in out


def test_module_exports():
    choices = next(a.choices for a in build_parser()._actions if a.dest == "adapter")
    assert choices == ["mmea", "elora", "lora", "none"]


@pytest.mark.parametrize(
    "extra",
    [["--adapter", "lora"], ["--lora"], ["--lora", "True"], ["--lora=true"], ["--lora", "--adapter", "lora"]],
)
def test_upstream_lora_switch_is_the_lora_adapter(extra):
    settings = _settings(FM + extra, {})
    assert settings.method == "lora" and settings.config == LoRAConfig(rank=4, alpha=1.0)
    assert settings.record() == {"adapter": "lora", "lora_rank": 4, "lora_alpha": 1.0}


def test_lora_flags_have_upstreams_defaults_and_set_the_lora_settings():
    raw = vars(build_parser().parse_args([]))
    assert raw["lora"] is False  # upstream: --lora takes true/false, default False
    assert _settings(FM + ["--lora", "False"], {}).method == "mmea"
    settings = _settings(FM + ["--lora", "--lora_rank", "8", "--lora_alpha", "2"], {})
    assert settings.config == LoRAConfig(rank=8, alpha=2.0) and settings.config.scale == 0.25


@pytest.mark.parametrize("adapter", ["mmea", "elora", "none"])
def test_lora_switch_contradicting_adapter_is_refused(capsys, adapter):
    err = _rejection(capsys, MINIMAL + FM + ["--lora", "--adapter", adapter])
    assert "--lora" in err and f"contradicts --adapter {adapter}" in err


def test_lora_needs_a_foundation_model_and_its_settings_need_lora(capsys):
    assert "--adapter lora needs --foundation_model" in _rejection(capsys, MINIMAL + ["--lora"])
    assert "--lora_rank does not apply to --adapter mmea" in _rejection(capsys, MINIMAL + FM + ["--lora_rank", "8"])
    assert "--elora_rank does not apply to --adapter lora" in _rejection(
        capsys, MINIMAL + FM + ["--lora", "--elora_rank", "8"]
    )


def test_lora_in_a_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("lora: true\nlora_rank: 2\n")
    args = parse_args(MINIMAL + FM + ["--config", str(config)], environ={})
    assert args.adapter_settings.method == "lora" and args.adapter_settings.config.rank == 2


@pytest.mark.parametrize(
    "extra,flag",
    [
        (FM + ["--adapter", "elora", "--mmea_rank", "8"], "--mmea_rank"),
        (FM + ["--adapter", "none", "--elora_rank", "8"], "--elora_rank"),
        (["--mmea_phi", "res"], "--mmea_phi"),
    ],
)
def test_a_setting_of_another_method_is_refused_not_ignored(capsys, extra, flag):
    err = _rejection(capsys, MINIMAL + extra)
    assert f"{flag} does not apply to --adapter" in err


def test_resolved_settings_are_one_frozen_record_of_plain_data():
    settings = _settings(FM + ["--adapter", "elora", "--elora_rank", "4"], {})
    assert settings.record() == {"adapter": "elora", "elora_rank": 4, "elora_alpha": 16.0}
    with pytest.raises(AttributeError):
        settings.method = "none"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--compute_forces", "False"], "--compute_forces False is not supported"),
        (["--dipole_key", "mu"], "--dipole_key mu is not supported"),
        (["--charges_key", "q"], "--charges_key q is not supported"),
    ],
)
def test_flags_of_missing_features_are_refused_not_ignored(capsys, extra, message):
    assert message in _rejection(capsys, MINIMAL + extra)


def test_upstream_defaults_of_those_flags_are_accepted():
    args = _parse(["--compute_forces", "True", "--dipole_key", "dipole", "--charges_key", "charges"], {})
    assert args.compute_forces and args.dipole_key == "dipole"


# ----------------------------------------------------------------------------- upstream 0.3.16 flags

# The flags of upstream's basic run_train test (its ``_mace_params``, 0.3.16 era), as its
# test writes them: ``--flag=value``, or ``--flag`` alone for a switch.
UPSTREAM_BASIC_TEST_COMMAND = [
    "--name=MACE", "--valid_fraction=0.05", "--energy_weight=1.0", "--forces_weight=10.0",
    "--stress_weight=1.0", "--model=MACE", "--hidden_irreps=128x0e", "--r_max=3.5",
    "--batch_size=5", "--max_num_epochs=10", "--swa", "--start_swa=5", "--ema",
    "--ema_decay=0.99", "--amsgrad", "--restart_latest", "--device=cpu", "--seed=5",
    "--loss=stress", "--energy_key=REF_energy", "--forces_key=REF_forces",
    "--stress_key=REF_stress", "--eval_interval=2", "--use_reduced_cg=False",
    "--checkpoints_dir=out", "--model_dir=out", "--train_file=out/fit.xyz",
]


def test_upstream_basic_run_train_command_parses():
    args = parse_args(UPSTREAM_BASIC_TEST_COMMAND, environ={})
    assert args.use_reduced_cg is False and args.loss == "stress" and args.swa and args.ema
    assert not args.dry_run
    foundation = parse_args(UPSTREAM_BASIC_TEST_COMMAND + ["--foundation_model=small", "--multiheads_finetuning=False"], environ={})
    assert foundation.multiheads_finetuning is False


def test_dry_run_is_a_switch_a_restart_may_change():
    assert _parse([]).dry_run is False and _parse(["--dry_run"]).dry_run is True
    assert "dry_run" in arg_parser.RESTART_MAY_CHANGE
    assert "dry_run" not in arg_parser.defining_settings(_parse(["--dry_run"]))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--use_reduced_cg=True"], "--use_reduced_cg True is not supported: upstream's reduced coupling basis"),
        (["--enable_cueq", "true"], "--enable_cueq True is not supported"),
        (["--lbfgs"], "--lbfgs is not supported"),
        (["--pseudolabel_replay=True"], "--pseudolabel_replay is not supported: it configures upstream's multi-head"),
        (["--pt_train_file=mp"], "--pt_train_file mp: upstream downloads this replay set"),
        (["--multiheads_finetuning=True", "--foundation_model=f.model", "--pt_train_file=pt.xyz", "--E0s=average"],
         "--E0s average cannot be used with --multiheads_finetuning"),
        (["--multiheads_finetuning=True", "--foundation_model=f.model", "--pt_train_file=pt.xyz", "--E0s=foundation",
          "--keep_foundation_head=True"], "--keep_foundation_head and --multiheads_finetuning"),
        (["--heads={'DFT': {'train_file': 'a.xyz', 'statistics_file': 's.json'}}"],
         "--heads: head 'DFT' sets statistics_file, which a head cannot set here"),
        (["--heads={'DFT': {'E0s': 'average'}}", "--train_file="], "--heads: head 'DFT' has no train_file"),
        (["--heads=['DFT']"], "--heads: expected a non-empty dict"),
        (["--heads={'pt_head': {}}", "--multiheads_finetuning=True"], "'pt_head' is the replay head"),
    ],
)
def test_upstream_0316_flags_of_missing_features_are_refused(capsys, extra, message):
    err = _rejection(capsys, MINIMAL + extra)
    assert message in err and err.count("error:") == 1


def test_upstream_0316_flags_at_their_defaults_are_accepted():
    args = _parse(["--use_reduced_cg", "False", "--enable_cueq=False", "--multiheads_finetuning=False",
                   "--foundation_model_elements=False", "--num_samples_pt=10000", "--subselect_pt=random",
                   "--filter_type_pt=none", "--force_mh_ft_lr=False"])
    assert (args.use_reduced_cg, args.multiheads_finetuning, args.num_samples_pt) == (False, False, 10000)


def test_replay_fine_tuning_flags_are_accepted():
    args = _parse(["--multiheads_finetuning=True", "--foundation_model=f.model", "--pt_train_file=pt.xyz",
                   "--pt_valid_file=ptv.xyz", "--weight_pt_head=2.5", "--E0s=estimated", "--force_mh_ft_lr=True",
                   "--real_pt_data_ratio_threshold=0.2", "--skip_evaluate_heads="])
    assert (args.multiheads_finetuning, args.pt_train_file, args.weight_pt_head) == (True, "pt.xyz", 2.5)
    assert (args.real_pt_data_ratio_threshold, args.skip_evaluate_heads) == (0.2, "")


def test_heads_of_an_upstream_config_file_are_read(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("heads:\n  DFT:\n    train_file: fit_dft.xyz\n  MP2:\n    train_file: fit_mp2.xyz\n    E0s: average\n")
    args = parse_args(["--name", "run", "--config", str(config)], environ={})
    assert arg_parser.parse_heads(args.heads) == {
        "DFT": {"train_file": "fit_dft.xyz"}, "MP2": {"train_file": "fit_mp2.xyz", "E0s": "average"}}


def test_use_reduced_cg_help_says_only_false_is_accepted(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--use_reduced_cg" in help_text and "Only false is accepted" in help_text
    assert "--dry_run" in help_text
