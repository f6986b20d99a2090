"""Upstream's public Python names that scripts use to build graphs and models run unchanged:
``mace.data`` (Configuration's label views, config_from_atoms, AtomicData.from_config),
``mace.tools.torch_geometric`` (the loader), ``mace.modules`` (interaction_classes,
gate_dict, MACE keywords). Each is a face over our own code, checked against it here."""
from typing import Iterator

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from e3nn import o3

from mace import data, modules
from mace.data.loader import collate_graphs
from mace.modules.blocks import INTERACTION_CLASSES
from mace.modules.builder import GATES
from mace.tools import AtomicNumberTable, torch_geometric
from tests.modules.helpers import ELEMENTS, tiny_model


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def water(shift: float = 0.0, labelled: bool = True) -> Atoms:
    atoms = Atoms("OHH", positions=[[0, 0, shift], [0.96, 0, 0], [-0.24, 0.93, 0]])
    if labelled:
        atoms.calc = SinglePointCalculator(atoms, energy=-14.2, forces=np.full((3, 3), 0.1))
    return atoms


def test_an_upstream_script_batches_atomic_data_and_calls_the_model() -> None:
    """The pattern of upstream's calculator and tutorials, against our own batching."""
    model = tiny_model()
    z_table = AtomicNumberTable([int(z) for z in model.atomic_numbers])
    configs = [data.config_from_atoms(water(shift)) for shift in (0.0, 0.1, 0.2)]
    loader = torch_geometric.dataloader.DataLoader(
        dataset=[data.AtomicData.from_config(c, z_table=z_table, cutoff=float(model.r_max)) for c in configs],
        batch_size=2, shuffle=False, drop_last=False,
    )
    batches = [batch.to("cpu") for batch in loader]
    assert [batch.num_graphs for batch in batches] == [2, 1]
    output = model(batches[0].to_dict(), compute_force=True)
    ours = model(collate_graphs([data.graph_from_configuration(c, z_table, float(model.r_max)) for c in configs[:2]]))
    torch.testing.assert_close(output["energy"], ours["energy"], rtol=0, atol=0)
    torch.testing.assert_close(output["forces"], ours["forces"], rtol=0, atol=0)
    assert torch_geometric.DataLoader is torch_geometric.dataloader.DataLoader


def test_atomic_data_reads_as_attributes_and_picks_the_head_as_upstream() -> None:
    config = data.config_from_atoms(water())
    z_table = AtomicNumberTable(list(ELEMENTS))
    graph = data.AtomicData.from_config(config, z_table, cutoff=3.0)
    assert graph.positions.shape == (3, 3) and graph.edge_index.shape == (2, 6)
    assert graph.energy.item() == -14.2 and graph.num_graphs == 1
    assert graph.to_dict().keys() == data.graph_from_configuration(config, z_table, 3.0).keys()
    with pytest.raises(AttributeError, match="dipole"):
        graph.dipole
    assert data.AtomicData.from_config(config, z_table, 3.0, heads=["DFT", "Default"]).head.item() == 1
    assert data.AtomicData.from_config(config, z_table, 3.0, heads=["DFT", "MP2"]).head.item() == 1  # the last one
    with pytest.raises(ValueError, match="follow_batch"):
        torch_geometric.dataloader.DataLoader([graph], batch_size=1, follow_batch=["positions"])


def test_configuration_has_upstream_s_label_views() -> None:
    labelled = data.config_from_atoms(water())
    assert labelled.head == "Default"
    assert labelled.properties["energy"] == -14.2 and labelled.properties["forces"].shape == (3, 3)
    assert labelled.properties["stress"] is None and labelled.properties["virials"] is None
    assert labelled.property_weights == {"energy": 1.0, "forces": 1.0, "stress": 0.0, "virials": 0.0}
    bare = data.config_from_atoms(water(labelled=False))
    assert bare.properties == {"energy": None, "forces": None, "stress": None, "virials": None}
    assert bare.property_weights == {"energy": 0.0, "forces": 0.0, "stress": 0.0, "virials": 0.0}
    with pytest.raises(AttributeError):
        bare.properties = {}  # a view of the fields, not a second store


def test_modules_tables_under_upstream_s_names() -> None:
    assert modules.interaction_classes is INTERACTION_CLASSES
    assert modules.gate_dict is GATES
    assert modules.gate_dict["silu"] is torch.nn.functional.silu and modules.gate_dict["None"] is None


def model_kwargs(**extra: object) -> dict:
    return dict(
        r_max=4.0, num_bessel=4, num_polynomial_cutoff=5, max_ell=1,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=2, num_elements=3, hidden_irreps=o3.Irreps("4x0e + 4x1o"), MLP_irreps=o3.Irreps("4x0e"),
        atomic_energies=np.array([-1.5, -10.0, -20.0]), avg_num_neighbors=3.0, atomic_numbers=list(ELEMENTS),
        correlation=2, gate=modules.gate_dict["silu"], **extra,
    )


@pytest.mark.parametrize("cls, extra", [(modules.MACE, {}),
                                        (modules.ScaleShiftMACE, {"atomic_inter_scale": 1.0, "atomic_inter_shift": 0.0})])
def test_models_take_upstream_s_radial_keywords_with_the_implemented_values(cls: type, extra: dict) -> None:
    cls(**model_kwargs(radial_type="bessel", distance_transform="None", pair_repulsion=False, **extra))
    cls(**model_kwargs(distance_transform=None, **extra))
    for option, value in (("radial_type", "gaussian"), ("radial_type", "chebyshev"),
                          ("distance_transform", "Agnesi"), ("distance_transform", "Soft"), ("pair_repulsion", True)):
        cls(**model_kwargs(**{option: value}, **extra))
    for option, value in (("radial_type", "spline"), ("distance_transform", "Log")):
        with pytest.raises(ValueError, match=rf"MACE\({option}={value!r}\) is not supported"):
            cls(**model_kwargs(**{option: value}, **extra))
