"""An ASE calculator for MACE models: energies, forces and stress for MD and relaxations."""
from typing import List, Optional, Union

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mace.data import config_from_atoms
from mace.modules.loading import load_model
from mace.modules.predict import predict
from mace.core.torch_setup import dtype_from_name, select_device


class MACECalculator(Calculator):
    """ASE calculator backed by a MACE model file (or an in-memory model).

    Stress is computed only for periodic structures. ``energy_units_to_eV`` and
    ``length_units_to_A`` convert a model trained in other units to ASE's eV and Angstrom.
    ``trust_pickle=True`` reads the model file without the safe loader's restrictions: only
    for a file you trust (see :func:`mace.modules.loading.load_model`).
    """

    implemented_properties = ["energy", "free_energy", "node_energy", "forces", "stress"]

    def __init__(
        self,
        model_paths: Union[str, List[str], None] = None,
        device: str = "cpu",
        default_dtype: str = "float64",
        energy_units_to_eV: float = 1.0,
        length_units_to_A: float = 1.0,
        model: Optional[torch.nn.Module] = None,
        trust_pickle: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        dtype = dtype_from_name(default_dtype)
        torch.set_default_dtype(dtype)
        self.device = select_device(device)
        if model is None:
            path = self._single_path(model_paths)
            model = load_model(path, device=str(self.device), dtype=dtype, trust_pickle=trust_pickle)
        self.model = model.to(device=self.device, dtype=dtype).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.energy_units_to_eV = energy_units_to_eV
        self.length_units_to_A = length_units_to_A

    @staticmethod
    def _single_path(model_paths: Union[str, List[str], None]) -> str:
        if isinstance(model_paths, (list, tuple)):
            if len(model_paths) != 1:
                raise ValueError("MACECalculator takes exactly one model file")
            return model_paths[0]
        if model_paths is None:
            raise ValueError("MACECalculator needs model_paths or model")
        return model_paths

    def calculate(self, atoms: Optional[Atoms] = None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        scaled = self.atoms.copy()
        scaled.calc = None
        scaled.set_cell(np.array(self.atoms.get_cell()) / self.length_units_to_A, scale_atoms=False)
        scaled.positions = self.atoms.positions / self.length_units_to_A
        periodic = bool(np.any(self.atoms.pbc))
        (prediction,) = predict(self.model, [config_from_atoms(scaled)], batch_size=1, compute_stress=periodic)
        energy = prediction.energy * self.energy_units_to_eV
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "node_energy": prediction.node_energy * self.energy_units_to_eV,
            "forces": prediction.forces * self.energy_units_to_eV / self.length_units_to_A,
        }
        if periodic:
            stress = prediction.stress * self.energy_units_to_eV / self.length_units_to_A**3
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
