"""An ASE calculator for MACE model files: energies, forces and stress for MD and relaxations,
committees of several models, and per-atom descriptors.

Behaves as upstream's ``mace.calculators.MACECalculator`` (0.3.x) does for energy models, as
a user's script sees it: the same arguments and the same ``results`` keys. Model files may
also be TorchScript files (``NAME_compiled.model`` of a training run), and
``compile_mode="script"`` compiles the models with TorchScript. What this version does not
implement (torch.compile, dipole model types, cuEquivariance) is refused with an error that
says so, never silently ignored; see docs/compat.md, "Python API".
"""
import glob
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mace.core.errors import UserInputError
from mace.data import Configuration, batch_to_device, collate_graphs, config_from_atoms
from mace.modules.export import is_torchscript_file, script_model
from mace.modules.loading import load_model
from mace.modules.heads import head_index
from mace.modules.models import model_heads
from mace.modules.predict import Prediction, model_graphs, node_descriptors, predict

PathLike = Union[str, Path]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# compile_mode values: None (eager) or TorchScript. Upstream passes any other value to
# torch.compile as its mode, which this version refuses.
TORCHSCRIPT_MODES = ("script",)


class CalculatorInputError(UserInputError, ValueError):
    """A bad argument to the calculator (or a helper such as ``mace_mp``): a ValueError,
    as upstream raises, and a UserInputError, as the rest of this package raises."""


class UnsupportedOptionError(UserInputError, NotImplementedError):
    """An upstream option that this version does not implement (refused, never ignored)."""


def resolve_device(name: str) -> torch.device:
    """``""``: CUDA when available, else the CPU (as upstream's helpers); ``cpu``, ``cuda``, ``cuda:N``."""
    if name == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise CalculatorInputError(f"device='{name}' was requested but CUDA is not available on this machine")
        return torch.device(name)
    raise CalculatorInputError(f"device must be 'cpu', 'cuda', 'cuda:N' or '' (CUDA if available), not '{name}'")


def model_file_paths(model_paths: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    """The model files named by ``model_paths``: a path, a list of paths, or (as upstream) a
    glob pattern such as ``"committee/mace_*.model"`` (matches taken in sorted order)."""
    if isinstance(model_paths, (list, tuple)):
        paths = [Path(p) for p in model_paths]
        if not paths:
            raise CalculatorInputError("model_paths is an empty list: give at least one model file")
        return paths
    if isinstance(model_paths, Path) or Path(model_paths).is_file():
        return [Path(model_paths)]
    matches = sorted(glob.glob(str(model_paths)))
    if not matches:
        raise CalculatorInputError(f"model_paths='{model_paths}': no model file exists there or matches that pattern")
    return [Path(p) for p in matches]


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return model.r_max.dtype


def load_model_file(path: Path, dtype: Optional[torch.dtype], trust_pickle: bool) -> torch.nn.Module:
    """A model file: pickled (the safe loader, in ``dtype`` if given) or TorchScript
    (``torch.jit.load``; it runs in the dtype it was compiled in)."""
    if not is_torchscript_file(path):
        return load_model(path, dtype=dtype, trust_pickle=trust_pickle)
    model = torch.jit.load(str(path), map_location="cpu")
    if not hasattr(model, "atomic_energies_fn"):
        raise CalculatorInputError(
            f"'{path}' is a TorchScript file of another interface (a LAMMPS model?), not a compiled MACE model"
        )
    if dtype is not None and dtype != model_dtype(model):
        raise CalculatorInputError(
            f"'{path}' is a TorchScript model compiled in {model_dtype(model)}; it runs in that dtype only: "
            f"pass default_dtype='' (or the file's dtype), or use the model file it was compiled from"
        )
    return model


def is_scripted(model: torch.nn.Module) -> bool:
    return isinstance(model, torch.jit.ScriptModule)


def node_e0s(model: torch.nn.Module, atomic_numbers: np.ndarray, head: int = 0) -> np.ndarray:
    """Each atom's isolated-atom energy E0 in the model, of head ``head``."""
    table = torch.atleast_2d(model.atomic_energies_fn.atomic_energies)[head].detach().cpu().numpy()
    index = {int(z): i for i, z in enumerate(model.atomic_numbers.tolist())}
    return np.array([table[index[int(z)]] for z in atomic_numbers], dtype=float)


class MACECalculator(Calculator):
    """ASE calculator backed by one MACE model file, or a committee of several.

    ``model_paths``: a file, a list of files or a glob pattern (several files: a committee,
    whose ``energy``/``forces``/``stress`` are the means, with the spread of the members in
    ``energies``, ``energy_var``, ``forces_comm``, ``forces_var``, ``stress_comm`` and
    ``stress_var``). ``models`` (or ``model``) gives modules already in memory instead.
    ``default_dtype``: 'float64', 'float32', or '' for the dtype the file holds. ``head``: the
    head to evaluate; None: the only head, else the one named 'default'.
    ``energy_units_to_eV`` and ``length_units_to_A`` convert a model trained in other units
    to ASE's eV and Angstrom. Stress is computed only for
    periodic structures. ``trust_pickle=True`` reads the model files without the safe
    loader's restrictions: only for files you trust (see :func:`mace.modules.loading.load_model`).
    A TorchScript file (``torch.jit.save``, e.g. ``NAME_compiled.model``) is read with
    ``torch.jit.load`` and runs in its own dtype; ``compile_mode="script"`` compiles the models
    with TorchScript (``mace.modules.export.script_model``; same results, descriptors need the
    uncompiled model). Other ``compile_mode`` values (upstream's torch.compile modes) are refused.
    """

    def __init__(
        self,
        model_paths: Union[PathLike, Sequence[PathLike], None] = None,
        device: str = "cpu",
        energy_units_to_eV: float = 1.0,
        length_units_to_A: float = 1.0,
        default_dtype: str = "",
        charges_key: str = "Qs",
        model_type: str = "MACE",
        compile_mode: Optional[str] = None,
        fullgraph: bool = True,
        enable_cueq: bool = False,
        head: Optional[str] = None,
        models: Union[torch.nn.Module, Sequence[torch.nn.Module], None] = None,
        model: Optional[torch.nn.Module] = None,
        trust_pickle: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self._refuse_unsupported(model_type, compile_mode, enable_cueq)
        self.compile_mode = compile_mode
        if default_dtype not in ("", *DTYPES):
            raise CalculatorInputError(f"default_dtype must be 'float64', 'float32' or '' (the model's), not '{default_dtype}'")
        self.device = resolve_device(device)
        self.model_type = model_type
        self.charges_key = charges_key  # read by dipole models only, which this version does not run
        self.energy_units_to_eV = energy_units_to_eV
        self.length_units_to_A = length_units_to_A

        loaded = self._load(model_paths, models, model, DTYPES.get(default_dtype), trust_pickle)
        dtype = DTYPES[default_dtype] if default_dtype else model_dtype(loaded[0])
        torch.set_default_dtype(dtype)
        self.default_dtype = "float64" if dtype == torch.float64 else "float32"
        self.models = [m.to(device=self.device, dtype=dtype).eval() for m in loaded]
        for member in self.models:
            for parameter in member.parameters():
                parameter.requires_grad_(False)
        if compile_mode in TORCHSCRIPT_MODES:
            self.models = [m if is_scripted(m) else script_model(m) for m in self.models]
        self.num_models = len(self.models)
        self.available_heads = model_heads(self.models[0])
        self.head_index = self._check_head(head)
        self.head = self.available_heads[self.head_index]
        self.r_max = float(self.models[0].r_max)

        self.implemented_properties = ["energy", "free_energy", "node_energy", "forces", "stress"]
        if self.num_models > 1:
            logging.info("Running a committee of %d MACE models", self.num_models)
            self.implemented_properties += [
                "energies", "energy_comm", "energy_var", "forces_comm", "forces_var", "stress_comm", "stress_var",
            ]

    @property
    def model(self) -> torch.nn.Module:
        """The (first) model."""
        return self.models[0]

    @staticmethod
    def _refuse_unsupported(model_type: str, compile_mode: Optional[str], enable_cueq: bool) -> None:
        if model_type != "MACE":
            raise UnsupportedOptionError(
                f"model_type='{model_type}' is not supported: this version runs energy models only (model_type='MACE')"
            )
        if compile_mode is not None and compile_mode not in TORCHSCRIPT_MODES:
            raise UnsupportedOptionError(
                f"compile_mode='{compile_mode}': torch.compile is not supported; pass compile_mode='script' "
                "to compile the models with TorchScript, or None"
            )
        if enable_cueq:
            raise UnsupportedOptionError("enable_cueq=True: cuEquivariance acceleration is not supported; leave it False")

    @staticmethod
    def _load(
        model_paths: Union[PathLike, Sequence[PathLike], None],
        models: Union[torch.nn.Module, Sequence[torch.nn.Module], None],
        model: Optional[torch.nn.Module],
        dtype: Optional[torch.dtype],
        trust_pickle: bool,
    ) -> List[torch.nn.Module]:
        if model is not None:
            if models is not None:
                raise CalculatorInputError("give either models or model, not both")
            models = model
        if (model_paths is None) == (models is None):
            raise CalculatorInputError("give exactly one of model_paths (model files) or models (modules in memory)")
        if models is not None:
            members = list(models) if isinstance(models, (list, tuple)) else [models]
            if not members:
                raise CalculatorInputError("models is an empty list: give at least one model")
            return members
        return [load_model_file(path, dtype, trust_pickle) for path in model_file_paths(model_paths)]

    def _check_head(self, head: Optional[str]) -> int:
        """The index of the head to evaluate (see :func:`mace.modules.heads.head_index`); a
        committee's models must name the same heads."""
        for member in self.models:
            heads = model_heads(member)
            if heads != self.available_heads:
                raise CalculatorInputError(f"the committee's models name their heads differently: {heads} and {self.available_heads}")
        try:
            return head_index(self.models[0], head)
        except UserInputError as exc:
            raise CalculatorInputError(f"head={head!r}: {exc}") from exc

    def _configuration(self, atoms: Atoms) -> Configuration:
        """``atoms`` in the model's length unit."""
        scaled = atoms.copy()
        scaled.calc = None
        scaled.set_cell(np.array(atoms.get_cell()) / self.length_units_to_A, scale_atoms=False)
        scaled.positions = atoms.positions / self.length_units_to_A
        return config_from_atoms(scaled)

    def calculate(self, atoms: Optional[Atoms] = None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        config = self._configuration(self.atoms)
        periodic = bool(np.any(self.atoms.pbc))
        predictions = [
            predict(member, [config], batch_size=1, compute_stress=periodic, head=self.head)[0]
            for member in self.models
        ]
        self.results = self._results(predictions, config.atomic_numbers, periodic)

    def _results(self, predictions: List[Prediction], atomic_numbers: np.ndarray, periodic: bool) -> Dict:
        """Means over the committee (one model: its own values), and the members' spread."""
        energy_unit = self.energy_units_to_eV
        force_unit = energy_unit / self.length_units_to_A
        stress_unit = energy_unit / self.length_units_to_A**3
        energies = np.array([p.energy for p in predictions]) * energy_unit
        forces = np.stack([p.forces for p in predictions]) * force_unit
        # As upstream: node_energy is each atom's energy above its isolated-atom E0.
        node_energies = np.stack(
            [p.node_energy - node_e0s(m, atomic_numbers, self.head_index) for p, m in zip(predictions, self.models)]
        ) * energy_unit
        results = {
            "energy": float(energies.mean()),
            "free_energy": float(energies.mean()),
            "node_energy": node_energies.mean(axis=0),
            "forces": forces.mean(axis=0),
        }
        stresses = np.stack([p.stress for p in predictions]) * stress_unit if periodic else None
        if stresses is not None:
            results["stress"] = full_3x3_to_voigt_6_stress(stresses.mean(axis=0))
        if self.num_models > 1:
            results.update(
                energies=energies,
                energy_comm=energies,
                energy_var=float(energies.var()),
                forces_comm=forces,
                forces_var=forces.var(axis=0),
            )
            if stresses is not None:
                results["stress_comm"] = full_3x3_to_voigt_6_stress(stresses)
                results["stress_var"] = full_3x3_to_voigt_6_stress(stresses.var(axis=0))
        return results

    def get_descriptors(
        self, atoms: Optional[Atoms] = None, invariants_only: bool = True, num_layers: int = -1
    ) -> Union[np.ndarray, List[np.ndarray]]:
        """Per-atom descriptors: the node features after each layer, layers side by side.

        ``invariants_only`` keeps each layer's invariant (0e) channels; ``num_layers`` keeps
        the first that many layers (-1: all). An array [n_atoms, features], or one per model
        for a committee. Defaults to the calculator's current atoms.
        """
        if atoms is None:
            if self.atoms is None:
                raise CalculatorInputError("get_descriptors needs atoms: none given and none calculated yet")
            atoms = self.atoms
        config = self._configuration(atoms)
        descriptors = [self._descriptors(member, config, invariants_only, num_layers) for member in self.models]
        return descriptors[0] if self.num_models == 1 else descriptors

    def _descriptors(
        self, member: torch.nn.Module, config: Configuration, invariants_only: bool, num_layers: int
    ) -> np.ndarray:
        if is_scripted(member):
            raise UnsupportedOptionError(
                "get_descriptors needs the model file (NAME.model): a TorchScript model computes energies and forces only"
            )
        total = len(member.layer_irreps())
        if num_layers == -1:
            num_layers = total
        if not 1 <= num_layers <= total:
            raise CalculatorInputError(f"num_layers={num_layers}: the model has {total} layers (or pass -1 for all)")
        batch = batch_to_device(
            collate_graphs(model_graphs(member, [config], self.head_index)), self.device, model_dtype(member)
        )
        return node_descriptors(member, batch, invariants_only, num_layers).cpu().numpy()
