"""Upstream's public path of the module LAMMPS's ``pair_style mace`` runs; it lives in
:mod:`mace.modules.lammps`, below the command line that writes it."""
from mace.modules.lammps import LAMMPS_MACE

__all__ = ["LAMMPS_MACE"]
