"""TorchScript compilation of models (``mace.modules.export``): every architecture, upstream's
files included, compiles and predicts as in eager mode; files are written atomically and
recognised as TorchScript."""
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from e3nn.util.jit import compile_mode

from mace.core.errors import UserInputError
from mace.data import Configuration
from mace.modules import load_model, save_model
from mace.modules.blocks import (
    RealAgnosticDensityInteractionBlock,
    RealAgnosticDensityResidualInteractionBlock,
    RealAgnosticResidualNonLinearInteractionBlock,
)
from mace.modules.export import is_torchscript_file, save_scripted, script_model
from tests.adapters.conftest import float64_single_thread_without_jit_optimisation  # noqa: F401 (autouse)
from tests.shared import shared_folder_or_skip

from .helpers import batch_of, random_molecule, tiny_model

ARCHITECTURES = {
    "MACE": dict(scale_shift=False),
    "ScaleShiftMACE": {},
    "ZBL and Agnesi": dict(pair_repulsion=True, distance_transform="Agnesi"),
    "Gaussian basis and Soft transform": dict(radial_type="gaussian", distance_transform="Soft"),
    "Chebyshev, cutoff on the MLP, last readout only": dict(
        radial_type="chebyshev", apply_cutoff=False, use_last_readout_only=True
    ),
    "density blocks": dict(
        interaction_cls_first=RealAgnosticDensityInteractionBlock,
        interaction_cls=RealAgnosticDensityResidualInteractionBlock,
    ),
    "non-linear blocks": dict(
        interaction_cls_first=RealAgnosticResidualNonLinearInteractionBlock,
        interaction_cls=RealAgnosticResidualNonLinearInteractionBlock,
    ),
    "correlation 1, one layer": dict(correlation=1, num_interactions=1),
}
UPSTREAM_FILES = [
    ("conformance", "small_v0316"),
    ("conformance", "off23arch_v035"),
    ("conformance-foundations", "densityzbl_v0316"),
    ("conformance-foundations", "mpres_v0316"),
]


def crystal_and_molecule(model: torch.nn.Module) -> Dict[str, Dict[str, torch.Tensor]]:
    rng = np.random.default_rng(5)
    molecule = random_molecule(rng, num_atoms=6)
    crystal = Configuration(
        atomic_numbers=molecule.atomic_numbers, positions=molecule.positions + 2.0,
        cell=np.diag([4.0, 4.4, 4.6]) + 0.3 * rng.random((3, 3)), pbc=(True, True, True),
    )
    return {"molecule": batch_of([molecule], model), "crystal": batch_of([crystal], model)}


def relative_difference(model: torch.nn.Module, scripted: torch.nn.Module) -> float:
    """Largest difference of energies, node energies, forces and stress, relative to the
    largest value of each (random models with a Chebyshev basis give huge values)."""
    worst = 0.0
    for name, batch in crystal_and_molecule(model).items():
        stress = name == "crystal"
        expected = model(dict(batch), compute_stress=stress)
        actual = scripted(dict(batch), compute_stress=stress)
        for key in ("energy", "node_energy", "forces") + (("stress", "virials") if stress else ()):
            value = expected[key].detach()
            scale = max(1.0, float(value.abs().max()))
            worst = max(worst, float((value - actual[key].detach()).abs().max()) / scale)
    return worst


@pytest.mark.parametrize("options", ARCHITECTURES.values(), ids=list(ARCHITECTURES))
def test_every_architecture_compiles_and_predicts_as_in_eager_mode(options) -> None:
    torch.manual_seed(0)
    model = tiny_model(**options)
    assert relative_difference(model, script_model(model)) < 1e-10


@pytest.mark.parametrize("folder, name", UPSTREAM_FILES, ids=[name for _, name in UPSTREAM_FILES])
def test_upstream_written_files_compile_and_predict_as_in_eager_mode(folder: str, name: str) -> None:
    model = load_model(shared_folder_or_skip() / folder / "models" / f"{name}.model", dtype=torch.float64)
    assert relative_difference(model, script_model(model)) < 1e-10


def test_a_float32_model_compiles_in_float32() -> None:
    torch.manual_seed(0)
    model = tiny_model().float()
    scripted = script_model(model)
    assert scripted.node_embedding.linear.weight.dtype == torch.float32
    batch = {key: value.float() if value.is_floating_point() else value
             for key, value in crystal_and_molecule(model)["molecule"].items()}
    expected, actual = model(dict(batch)), scripted(dict(batch))
    assert actual["forces"].dtype == torch.float32
    assert float((expected["forces"] - actual["forces"]).abs().max()) < 1e-5


def test_saved_files_are_told_apart_and_the_loader_names_a_torchscript_one(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_model()
    save_model(model, tmp_path / "tiny.model")
    save_scripted(model, tmp_path / "tiny_compiled.model")
    (tmp_path / "text.model").write_text("not a model")
    assert is_torchscript_file(tmp_path / "tiny_compiled.model")
    assert not is_torchscript_file(tmp_path / "tiny.model") and not is_torchscript_file(tmp_path / "text.model")
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []
    with pytest.raises(UserInputError, match="is a TorchScript file .*NAME.model"):
        load_model(tmp_path / "tiny_compiled.model")


@compile_mode("script")
class _Unscriptable(torch.nn.Module):
    def forward(self, *inputs):  # TorchScript compiles no *args
        return inputs


def test_a_model_that_does_not_compile_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(Exception):
        save_scripted(_Unscriptable(), tmp_path / "bad_compiled.model")
    assert list(tmp_path.iterdir()) == []
