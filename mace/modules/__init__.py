"""The MACE model: blocks, symmetric contraction, radial functions and the energy models."""
from mace.modules.blocks import (
    INTERACTION_CLASSES,
    AtomicEnergiesBlock,
    EquivariantProductBasisBlock,
    LinearNodeEmbeddingBlock,
    LinearReadoutBlock,
    NonLinearReadoutBlock,
    RadialEmbeddingBlock,
    RealAgnosticInteractionBlock,
    RealAgnosticResidualInteractionBlock,
    ScaleShiftBlock,
)
from mace.modules.builder import GATES
from mace.modules.loading import load_model, save_model
from mace.modules.models import MACE, ScaleShiftMACE
from mace.modules.radial import BesselBasis, PolynomialCutoff
from mace.modules.symmetric_contraction import Contraction, SymmetricContraction

# Upstream's public names of the same tables: {block name: class}, {gate name: function}.
interaction_classes = INTERACTION_CLASSES
gate_dict = GATES

__all__ = [
    "GATES",
    "INTERACTION_CLASSES",
    "AtomicEnergiesBlock",
    "BesselBasis",
    "Contraction",
    "EquivariantProductBasisBlock",
    "LinearNodeEmbeddingBlock",
    "LinearReadoutBlock",
    "MACE",
    "NonLinearReadoutBlock",
    "PolynomialCutoff",
    "RadialEmbeddingBlock",
    "RealAgnosticInteractionBlock",
    "RealAgnosticResidualInteractionBlock",
    "ScaleShiftBlock",
    "ScaleShiftMACE",
    "SymmetricContraction",
    "gate_dict",
    "interaction_classes",
    "load_model",
    "save_model",
]
