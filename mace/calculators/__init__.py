"""ASE calculators: MACECalculator and upstream's foundation-model helpers."""
from mace.calculators.foundations_models import mace_mp, mace_off, mace_omol
from mace.calculators.mace import MACECalculator

__all__ = ["MACECalculator", "mace_mp", "mace_off", "mace_omol"]
