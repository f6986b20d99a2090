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
from mace.modules.loading import load_model, save_model
from mace.modules.models import MACE, ScaleShiftMACE
from mace.modules.radial import BesselBasis, PolynomialCutoff
from mace.modules.symmetric_contraction import Contraction, SymmetricContraction

__all__ = [
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
    "load_model",
    "save_model",
]
