"""The MACE model: blocks, symmetric contraction, radial functions and the energy models."""
from mace.modules.blocks import (
    INTERACTION_CLASSES,
    AtomicEnergiesBlock,
    EquivariantProductBasisBlock,
    LinearNodeEmbeddingBlock,
    LinearReadoutBlock,
    NonLinearReadoutBlock,
    RadialEmbeddingBlock,
    RealAgnosticDensityInteractionBlock,
    RealAgnosticDensityResidualInteractionBlock,
    RealAgnosticInteractionBlock,
    RealAgnosticResidualInteractionBlock,
    RealAgnosticResidualNonLinearInteractionBlock,
    ScaleShiftBlock,
)
from mace.modules.builder import GATES
from mace.modules.loading import load_model, save_model
from mace.modules.models import MACE, ScaleShiftMACE
from mace.modules.radial import (
    AgnesiTransform,
    BesselBasis,
    ChebychevBasis,
    GaussianBasis,
    PolynomialCutoff,
    SoftTransform,
    ZBLBasis,
)
from mace.modules.symmetric_contraction import Contraction, SymmetricContraction

# Upstream's public names of the same tables: {block name: class}, {gate name: function}.
interaction_classes = INTERACTION_CLASSES
gate_dict = GATES

__all__ = [
    "GATES",
    "INTERACTION_CLASSES",
    "AgnesiTransform",
    "AtomicEnergiesBlock",
    "BesselBasis",
    "ChebychevBasis",
    "Contraction",
    "EquivariantProductBasisBlock",
    "GaussianBasis",
    "LinearNodeEmbeddingBlock",
    "LinearReadoutBlock",
    "MACE",
    "NonLinearReadoutBlock",
    "PolynomialCutoff",
    "RadialEmbeddingBlock",
    "RealAgnosticDensityInteractionBlock",
    "RealAgnosticDensityResidualInteractionBlock",
    "RealAgnosticInteractionBlock",
    "RealAgnosticResidualInteractionBlock",
    "RealAgnosticResidualNonLinearInteractionBlock",
    "ScaleShiftBlock",
    "ScaleShiftMACE",
    "SoftTransform",
    "SymmetricContraction",
    "ZBLBasis",
    "gate_dict",
    "interaction_classes",
    "load_model",
    "save_model",
]
