"""ASE calculators: MACECalculator and upstream's foundation-model helpers; LAMMPS_MACE, the
module LAMMPS's ``pair_style mace`` runs."""
from mace.calculators.foundations_models import mace_mp, mace_off, mace_omol
from mace.calculators.lammps_mace import LAMMPS_MACE
from mace.calculators.mace import MACECalculator

__all__ = ["LAMMPS_MACE", "MACECalculator", "mace_mp", "mace_off", "mace_omol"]
