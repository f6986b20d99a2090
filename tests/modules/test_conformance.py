"""Our forward pass reproduces upstream's predictions for upstream-written model files.

The test discovers, in each folder of :data:`CONFORMANCE_FOLDERS`, every model in
``FOLDER/models`` and every prediction file ``FOLDER/predictions/MODEL__SET.xyz`` written
by upstream's eval_configs.
"""
from pathlib import Path
from typing import List, Tuple

import ase.io
import numpy as np
import pytest
import torch

from mace.data import config_from_atoms
from mace.modules import load_model
from mace.modules.predict import predict

# The architectures of MACE-OFF23 / small upstream models, and those of the newest
# foundation models (density blocks, ZBL, Agnesi; MACE-MP-0 style residual blocks).
CONFORMANCE_FOLDERS = ("conformance", "conformance-foundations")


def conformance_cases(shared: Path, folders: Tuple[str, ...] = CONFORMANCE_FOLDERS) -> List[Tuple[Path, Path]]:
    """(model file, upstream's predictions with it) for every pair found in ``folders``."""
    cases = []
    for folder in folders:
        models = {path.stem: path for path in sorted((shared / folder / "models").glob("*.model"))}
        for predictions in sorted((shared / folder / "predictions").glob("*__*.xyz")):
            model_name = predictions.stem.split("__")[0]
            if model_name in models:
                cases.append((models[model_name], predictions))
    return cases


def test_every_conformance_file_matches_upstream(shared_dir: Path) -> None:
    cases = conformance_cases(shared_dir)
    for folder in CONFORMANCE_FOLDERS:
        assert any(model.parent.parent.name == folder for model, _ in cases), f"no model/prediction pairs in {folder}"
    torch.set_default_dtype(torch.float64)
    for model_path, predictions_path in cases:
        model = load_model(model_path, dtype=torch.float64)
        frames = ase.io.read(predictions_path, index=":")
        predictions = predict(model, [config_from_atoms(atoms) for atoms in frames], batch_size=4)
        for index, (atoms, prediction) in enumerate(zip(frames, predictions)):
            where = f"{model_path.name} on {predictions_path.name} frame {index}"
            assert abs(prediction.energy - atoms.info["MACE_energy"]) < 1e-6, where
            np.testing.assert_allclose(prediction.forces, atoms.arrays["MACE_forces"], atol=1e-6, rtol=0, err_msg=where)


def test_unknown_element_names_it(shared_dir: Path) -> None:
    model_path, _ = conformance_cases(shared_dir)[0]
    model = load_model(model_path, dtype=torch.float64)
    from ase import Atoms

    from mace.core.errors import UserInputError

    atoms = Atoms("HU", positions=[[0, 0, 0], [0, 0, 1.5]])
    with pytest.raises(UserInputError, match="U"):
        predict(model, [config_from_atoms(atoms)])
