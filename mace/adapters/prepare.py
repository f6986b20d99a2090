"""Turning a foundation model file into the model that a fine-tuning run trains.

Steps: resolve the file (a path, or a published model name downloaded to a cache), load
it, warn where command-line architecture flags disagree with it (the foundation's
architecture wins), keep only the data's elements, set the E0s, optionally re-initialise
the readouts, and finally inject the adapters that decide what trains.
"""
import dataclasses
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from e3nn import o3

from mace.adapters import METHODS, count_trainable, inject_adapters, train_readouts, trainable_parameter_table
from mace.adapters.foundation import check_known_elements, restrict_to_elements, set_e0s
from mace.adapters.settings import AdapterSettings
from mace.modules.blocks import LinearReadoutBlock, NonLinearReadoutBlock, readout_gate
from mace.modules.heads import foundation_head_index, select_head
from mace.modules.loading import load_model
from mace.data.configuration import Configuration, compute_average_e0s, has_label
from mace.modules.models import MACE, model_heads
from mace.core.atomic_numbers import AtomicNumberTable
from mace.core.errors import UserInputError
from mace.core.files import atomic_write, record_or_check_sha256
from mace.data.statistics import format_e0s, resolve_e0s
from mace.modules.predict import predict

# The names upstream 0.3.16's --foundation_model accepts, with the URLs it downloads them
# from (its mace_mp_urls, mace_off_urls, mace_omol's and the MACE-Polar table). Many of these
# architectures do not load in this fork yet: loading one is the loader's clear error.
PUBLISHED_MODELS: Dict[str, str] = {
    # MACE-MP (mace_mp(model=NAME) takes the same names)
    "small": "https://github.com/ACEsuit/mace-mp/releases/download/mace_mp_0/2023-12-10-mace-128-L0_energy_epoch-249.model",
    "medium": "https://github.com/ACEsuit/mace-mp/releases/download/mace_mp_0/2023-12-03-mace-128-L1_epoch-199.model",
    "large": "https://github.com/ACEsuit/mace-mp/releases/download/mace_mp_0/MACE_MPtrj_2022.9.model",
    "small-0b": "https://github.com/ACEsuit/mace-mp/releases/download/mace_mp_0b/mace_agnesi_small.model",
    "medium-0b": "https://github.com/ACEsuit/mace-mp/releases/download/mace_mp_0b/mace_agnesi_medium.model",
    "small-0b2": "https://github.com/ACEsuit/mace-mp/releases/download/mace_mp_0b2/mace-small-density-agnesi-stress.model",
    "medium-0b2": "https://github.com/ACEsuit/mace-mp/releases/download/mace_mp_0b2/mace-medium-density-agnesi-stress.model",
    "large-0b2": "https://github.com/ACEsuit/mace-mp/releases/download/mace_mp_0b2/mace-large-density-agnesi-stress.model",
    "medium-0b3": "https://github.com/ACEsuit/mace-mp/releases/download/mace_mp_0b3/mace-mp-0b3-medium.model",
    "medium-mpa-0": "https://github.com/ACEsuit/mace-mp/releases/download/mace_mpa_0/mace-mpa-0-medium.model",
    "small-omat-0": "https://github.com/ACEsuit/mace-mp/releases/download/mace_omat_0/mace-omat-0-small.model",
    "medium-omat-0": "https://github.com/ACEsuit/mace-mp/releases/download/mace_omat_0/mace-omat-0-medium.model",
    "mace-matpes-pbe-0": "https://github.com/ACEsuit/mace-foundations/releases/download/mace_matpes_0/MACE-matpes-pbe-omat-ft.model",
    "mace-matpes-r2scan-0": "https://github.com/ACEsuit/mace-foundations/releases/download/mace_matpes_0/MACE-matpes-r2scan-omat-ft.model",
    "mh-0": "https://github.com/ACEsuit/mace-foundations/releases/download/mace_mh_1/mace-mh-0.model",
    "mh-1": "https://github.com/ACEsuit/mace-foundations/releases/download/mace_mh_1/mace-mh-1.model",
    # MACE-OFF23 (mace_off(model="small") etc.)
    "small_off": "https://raw.githubusercontent.com/ACEsuit/mace-off/main/mace_off23/MACE-OFF23_small.model",
    "medium_off": "https://raw.githubusercontent.com/ACEsuit/mace-off/main/mace_off23/MACE-OFF23_medium.model",
    "large_off": "https://raw.githubusercontent.com/ACEsuit/mace-off/main/mace_off23/MACE-OFF23_large.model",
    # MACE-OMOL (mace_omol(model="extra_large"))
    "mace_omol": "https://github.com/ACEsuit/mace-foundations/releases/download/mace_omol_0/MACE-omol-0-extra-large-1024.model",
    # MACE-Polar
    "polar-1-s": "https://github.com/ACEsuit/mace-foundations/releases/download/mace_polar_1/MACE-POLAR-1-S.model",
    "polar-1-m": "https://github.com/ACEsuit/mace-foundations/releases/download/mace_polar_1/MACE-POLAR-1-M.model",
    "polar-1-l": "https://github.com/ACEsuit/mace-foundations/releases/download/mace_polar_1/MACE-POLAR-1-L.model",
}


def cache_dir() -> Path:
    return Path(os.environ.get("MACE_CACHE", Path.home() / ".cache" / "mace"))


def resolve_foundation_path(name_or_path: str, downloads: Optional[Path] = None) -> Path:
    """A model file path; published names (:data:`PUBLISHED_MODELS`: 'medium', 'medium-mpa-0',
    'medium_off', ...) are downloaded once, into ``downloads`` (default: :func:`cache_dir`)."""
    path = Path(name_or_path)
    if path.is_file() or name_or_path not in PUBLISHED_MODELS:
        if not path.is_file():
            raise UserInputError(
                f"--foundation_model {name_or_path}: no such file (published names: {', '.join(PUBLISHED_MODELS)})"
            )
        return path
    url = PUBLISHED_MODELS[name_or_path]
    cached = (cache_dir() if downloads is None else downloads) / url.rsplit("/", 1)[-1]
    if not cached.is_file():
        logging.info("Downloading foundation model '%s' from %s to %s", name_or_path, url, cached)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as error:
            raise UserInputError(
                f"--foundation_model {name_or_path}: could not download {url} ({error}); "
                "download the file elsewhere and pass its path instead"
            ) from None
        atomic_write(cached, lambda temporary: Path(temporary).write_bytes(data))
    record_or_check_sha256(cached)
    return cached


def foundation_architecture(model: MACE) -> Dict[str, object]:
    """The hyperparameters of a loaded model, read off its modules."""
    hidden = o3.Irreps(model.products[0].linear.irreps_out)
    return {
        "r_max": float(model.r_max),
        "num_interactions": int(model.num_interactions),
        "num_channels": hidden.count((0, 1)),
        "max_L": max(ir.l for _, ir in hidden),
        "max_ell": o3.Irreps(model.spherical_harmonics.irreps_out).lmax,
        "correlation": model.products[0].symmetric_contractions.contractions[0].correlation,
        "num_radial_basis": int(model.radial_embedding.out_dim),
    }


def warn_architecture_mismatch(given: Mapping[str, Any], model: MACE) -> None:
    """Architecture flags given on the command line (flag -> value) that the foundation overrides."""
    for flag, value in foundation_architecture(model).items():
        if given.get(flag) is not None and given[flag] != value:
            logging.warning(
                "--%s=%s differs from the foundation model (%s); the foundation's architecture is used",
                flag, given[flag], value,
            )


def reinitialise_readouts(model: MACE) -> None:
    """Fresh readout weights (--foundation_model_readout turned off), same irreps as before."""
    for index, readout in enumerate(model.readouts):
        if isinstance(readout, NonLinearReadoutBlock):
            fresh = NonLinearReadoutBlock(
                readout.linear_1.irreps_in, readout.linear_1.irreps_out, readout_gate(readout),
                readout.linear_2.irreps_out, getattr(readout, "num_heads", 1),
            )
        else:
            fresh = LinearReadoutBlock(readout.linear.irreps_in, readout.linear.irreps_out)
        model.readouts[index] = fresh.to(dtype=model.r_max.dtype, device=model.r_max.device)


def prepare_foundation(
    foundation_path: Path,
    atomic_numbers: List[int],
    device: torch.device,
    keep_readouts: bool = True,
    trust_pickle: bool = False,
    given_architecture: Optional[Mapping[str, Any]] = None,
    foundation_head: Optional[str] = None,
    keep_all_elements: bool = False,
) -> MACE:
    """Foundation restricted to the data's elements ``atomic_numbers`` (all of its own with
    ``keep_all_elements``, --foundation_model_elements), readouts re-initialised unless kept;
    ``given_architecture``: flag values the user typed, warned about where the file differs.
    Of a multi-head foundation, the head ``foundation_head`` (upstream's default: the first
    that is not the pretraining head) is cut out as a one-head model."""
    foundation = load_model(foundation_path, device=str(device), dtype=torch.get_default_dtype(), trust_pickle=trust_pickle)
    logging.info("Foundation model %s: %s", foundation_path, foundation_architecture(foundation))
    heads = model_heads(foundation)
    if len(heads) > 1:
        index = foundation_head_index(foundation, foundation_head)
        logging.info("Selecting the head '%s' of %s as the foundation head", heads[index], heads)
        foundation = select_head(foundation, index)
    elif foundation_head is not None and foundation_head != heads[0]:
        raise UserInputError(f"--foundation_head {foundation_head}: the foundation model has one head, '{heads[0]}'")
    warn_architecture_mismatch(given_architecture or {}, foundation)
    if keep_all_elements:
        check_known_elements(foundation, atomic_numbers)  # restrict_to_elements checks them otherwise
        model = foundation
    else:
        model = restrict_to_elements(foundation, atomic_numbers)
    if not keep_readouts:
        reinitialise_readouts(model)
    return model


def residual_average_e0s(
    model: MACE, configs: Sequence[Configuration], table: AtomicNumberTable, head: int = 0
) -> Dict[int, float]:
    """Least-squares E0s of the energy the foundation does not explain: E_ref - E_interaction.

    Fitting E0s to the raw energies (as when training from scratch) leaves the foundation's
    mean interaction energy as an offset that fine-tuning must first unlearn; fitting them
    to the residual of the model as it starts training (adapters included, whose additive
    scalar terms shift energies from the first step) starts with no mean energy error.
    """
    energies = torch.atleast_2d(model.atomic_energies_fn.atomic_energies)[head].tolist()
    current_e0s = dict(zip(model.atomic_numbers.tolist(), energies))
    residuals = []
    for config, prediction in zip(configs, predict(model, configs, batch_size=16, head=model_heads(model)[head])):
        interaction = prediction.energy - sum(current_e0s[int(z)] for z in config.atomic_numbers)
        residuals.append(dataclasses.replace(config, energy=config.energy - interaction))
    return compute_average_e0s(residuals, table)


def set_finetuning_e0s(
    model: MACE,
    spec: Union[None, str, Dict[int, float]],
    train: Sequence[Configuration],
    isolated_atom_e0s: Dict[int, float],
    table: AtomicNumberTable,
    head: Optional[int] = None,
) -> None:
    """E0s of a fine-tuning run, as upstream: 'estimated' fits the residual of the foundation
    (see above), 'foundation' keeps the foundation's, 'average' fits the raw training energies;
    a dict or IsolatedAtom frames are used as given, and without either the foundation's stay.
    ``head``: the head index they are for (a replay fine-tune keeps the pretraining head's); None: all.
    Elements of the model that are not in ``table`` (the data's; the model kept all of the
    foundation's) keep the foundation's E0s, where upstream sets them to 0."""
    if spec == "estimated":
        e0s = residual_average_e0s(model, [c for c in train if has_label(c, "energy")], table, head or 0)
        logging.info(
            "E0s from least squares over the training energies minus the foundation's interaction energies: %s",
            format_e0s(e0s),
        )
    elif spec == "foundation" or (spec is None and not isolated_atom_e0s):
        logging.info("Keeping the foundation model's E0s")
        return
    else:
        e0s = resolve_e0s(spec, train, isolated_atom_e0s, table)
    current = torch.atleast_2d(model.atomic_energies_fn.atomic_energies)[head or 0].tolist()
    for z, energy in zip(model.atomic_numbers.tolist(), current):
        if int(z) not in table.zs:
            e0s.setdefault(int(z), energy)
    set_e0s(model, e0s, head)


def apply_adapters(model: MACE, settings: AdapterSettings, readouts_trained: bool) -> MACE:
    """Inject the chosen adapter, announce it and log where the trainable parameters are."""
    method = METHODS[settings.method]
    if method.banner is not None:
        banner = method.banner(settings.config)
        print(banner, flush=True)
        logging.info("\n%s", banner)
    model = inject_adapters(model, settings.method, settings.config)
    if readouts_trained:
        train_readouts(model)
    total = sum(p.numel() for p in model.parameters())
    trainable = count_trainable(model)
    logging.info(
        "Fine-tuning with adapter '%s': %s trainable of %s parameters (%.1f%%)",
        settings.method, f"{trainable:,}", f"{total:,}", 100.0 * trainable / max(total, 1),
    )
    logging.info("Trainable parameters by module:\n%s", _format_table(trainable_parameter_table(model)))
    return model


def _format_table(rows: Sequence, depth: int = 3) -> str:
    """Counts summed per module path cut to ``depth`` components (e.g. interactions.0.linear)."""
    grouped: Dict[str, int] = {}
    for name, count in rows:
        key = ".".join(name.split(".")[:depth])
        grouped[key] = grouped.get(key, 0) + count
    width = max((len(name) for name in grouped), default=10)
    return "\n".join(f"  {name:<{width}}  {count:>10,}" for name, count in grouped.items())
