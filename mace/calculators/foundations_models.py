"""``mace_mp``, ``mace_off`` and ``mace_omol``: upstream's one-line calculators for the
published foundation models, with upstream's arguments and defaults (0.3.x).

``model`` is a published name (resolved through :data:`PUBLISHED_NAMES` to our table of
published models, downloaded once into ``$MACE_CACHE``, else ``~/.cache/mace``) or the path
of a local model file, which is used as it is. Other keyword arguments go to
:class:`~mace.calculators.mace.MACECalculator`.
"""
import logging
from pathlib import Path
from typing import Dict, Union

import torch
from ase import units

from mace.adapters.prepare import resolve_foundation_path
from mace.calculators.mace import (
    CalculatorInputError,
    MACECalculator,
    UnsupportedOptionError,
    resolve_device,
)
from mace.core.errors import UserInputError
from mace.modules.loading import load_model

# mace_mp's names (upstream 0.3.16's mace_mp_urls), which are also their keys in the table.
MACE_MP_NAMES = (
    "small", "medium", "large", "small-0b", "medium-0b", "small-0b2", "medium-0b2", "large-0b2",
    "medium-0b3", "medium-mpa-0", "small-omat-0", "medium-omat-0", "mace-matpes-pbe-0",
    "mace-matpes-r2scan-0", "mh-0", "mh-1",
)
# Each helper's published names -> the key of that model in mace.adapters.prepare.PUBLISHED_MODELS.
PUBLISHED_NAMES: Dict[str, Dict[str, str]] = {
    "mace_mp": {name: name for name in MACE_MP_NAMES},
    "mace_off": {"small": "small_off", "medium": "medium_off", "large": "large_off"},
    "mace_omol": {"extra_large": "mace_omol"},
}
# The name each helper uses for model=None, as upstream 0.3.x (before 0.3.10 for mace_mp).
DEFAULT_NAMES = {"mace_mp": "medium", "mace_off": "medium", "mace_omol": "extra_large"}


class ModelUnavailableError(UserInputError, RuntimeError):
    """A published model that is neither cached nor downloadable now (upstream: RuntimeError)."""


def foundation_model_file(helper: str, model: Union[str, Path, None]) -> Path:
    """The model file ``helper(model=...)`` means: a published name of that helper, else a
    local file. Anything else (an unknown name, a URL, a missing file) is a clear error."""
    name = DEFAULT_NAMES[helper] if model is None else model
    published = PUBLISHED_NAMES[helper]
    if isinstance(name, str) and name in published:
        try:
            return resolve_foundation_path(published[name])
        except UserInputError as error:
            raise ModelUnavailableError(f"{helper}(model='{name}'): {error}") from None
    if Path(name).is_file():
        return Path(name)
    known = ", ".join(published) if published else "none yet"
    raise CalculatorInputError(
        f"{helper}(model='{name}'): no such model file, and not a published model name this version "
        f"knows for {helper} (known: {known}); download the model file and pass its path"
    )


def _calculator(
    helper: str,
    model: Union[str, Path, None],
    device: str,
    default_dtype: str,
    return_raw_model: bool,
    kwargs: dict,
) -> Union[MACECalculator, torch.nn.Module]:
    path = foundation_model_file(helper, model)
    logging.info("%s: using the model file %s", helper, path)
    if return_raw_model:
        return load_model(path, device=str(resolve_device(device)), trust_pickle=kwargs.get("trust_pickle", False))
    return MACECalculator(model_paths=path, device=device, default_dtype=default_dtype, **kwargs)


def mace_mp(
    model: Union[str, Path, None] = None,
    device: str = "",
    default_dtype: str = "float32",
    dispersion: bool = False,
    damping: str = "bj",
    dispersion_xc: str = "pbe",
    dispersion_cutoff: float = 40.0 * units.Bohr,
    return_raw_model: bool = False,
    **kwargs,
) -> Union[MACECalculator, torch.nn.Module]:
    """A calculator with a MACE-MP foundation model (Materials Project, 89 elements).

    ``model``: 'small', 'medium' (the default), 'large' or another name of upstream's
    (:data:`MACE_MP_NAMES`: 'medium-mpa-0', 'small-omat-0', 'mh-1', ...), or a model file
    path; architectures this version cannot load yet are refused when loading. ``device``:
    '' picks CUDA when available, else the CPU. ``dispersion=True`` (D3 through torch-dftd,
    with ``damping``, ``dispersion_xc``, ``dispersion_cutoff``) is not supported and refused.
    ``return_raw_model=True`` returns the loaded model instead of a calculator.
    """
    if dispersion:
        raise UnsupportedOptionError(
            "mace_mp(dispersion=True): the D3 dispersion correction needs torch-dftd "
            "(TorchDFTD3Calculator), which this version does not ship or support; use dispersion=False, "
            "or add a D3 calculator of your own with ase.calculators.mixing.SumCalculator"
        )
    return _calculator("mace_mp", model, device, default_dtype, return_raw_model, kwargs)


def mace_off(
    model: Union[str, Path, None] = None,
    device: str = "",
    default_dtype: str = "float64",
    return_raw_model: bool = False,
    **kwargs,
) -> Union[MACECalculator, torch.nn.Module]:
    """A calculator with a MACE-OFF23 organic force field: 'small', 'medium' (the default) or
    'large', or a model file path; see :func:`mace_mp` for the other arguments."""
    return _calculator("mace_off", model, device, default_dtype, return_raw_model, kwargs)


def mace_omol(
    model: Union[str, Path, None] = None,
    device: str = "",
    default_dtype: str = "float64",
    return_raw_model: bool = False,
    **kwargs,
) -> Union[MACECalculator, torch.nn.Module]:
    """A calculator with a MACE-OMOL model: 'extra_large' (the default, upstream's published
    model) or a model file path; an architecture this version cannot load yet is refused
    when loading."""
    return _calculator("mace_omol", model, device, default_dtype, return_raw_model, kwargs)
