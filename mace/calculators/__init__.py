"""ASE calculators."""
from mace.calculators.mace import MACECalculator

__all__ = ["MACECalculator"]
