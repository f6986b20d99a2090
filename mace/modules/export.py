"""TorchScript files of a model: what MD codes and ``torch.jit.load`` run without this package.

:func:`script_model` compiles a copy of a model with e3nn's ``compile`` (each e3nn module
scripted or traced as its ``compile_mode`` says, the rest scripted); :func:`save_scripted`
writes it with ``torch.jit.save``, atomically. A submodule that TorchScript cannot compile as
it is defines ``scriptable()``, returning the module to compile in its place, which computes
the same function (the low-rank adapter wrappers return their base with the update folded in).
"""
import copy
import itertools
import os
import zipfile
from typing import Union

import torch
from e3nn.util import jit

from mace.core.files import atomic_write

PathLike = Union[str, os.PathLike]


def replace_submodule(model: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    """Put ``module`` at ``path`` (a name of ``model.named_modules()``) in ``model``."""
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path), name, module)


def scriptable_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose submodules that define ``scriptable()`` are replaced by it
    (outermost first; the model itself is left as it is)."""
    model = copy.deepcopy(model)
    replaced = []
    for path, module in list(model.named_modules()):
        if path and hasattr(module, "scriptable") and not any(path.startswith(f"{done}.") for done in replaced):
            replace_submodule(model, path, module.scriptable())
            replaced.append(path)
    return model


def _float_dtype(model: torch.nn.Module) -> torch.dtype:
    tensors = itertools.chain(model.parameters(), model.buffers())
    return next((t.dtype for t in tensors if t.is_floating_point()), torch.get_default_dtype())


def script_model(model: torch.nn.Module) -> torch.jit.ScriptModule:
    """TorchScript of ``model`` (compiled from a copy: ``model`` is unchanged). Its ``forward``
    takes the same arguments and gives the same outputs, up to rounding where TorchScript's
    optimising executor fuses kernels. e3nn traces some modules with random inputs of the
    default dtype, which is therefore the model's while compiling."""
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(_float_dtype(model))
    try:
        return jit.compile(scriptable_copy(model))
    finally:
        torch.set_default_dtype(default_dtype)


def save_scripted(model: torch.nn.Module, path: PathLike) -> None:
    """Compile ``model`` (:func:`script_model`) and ``torch.jit.save`` it atomically: a reader
    never sees a half-written file, and a failed compilation writes nothing."""
    scripted = script_model(model)
    atomic_write(path, lambda temporary: torch.jit.save(scripted, temporary))


def is_torchscript_file(path: PathLike) -> bool:
    """Whether ``path`` holds a TorchScript archive (``torch.jit.save``), not a pickled module.

    Both are zip archives; TorchScript's keeps its code under ``code/`` and its constants in
    ``constants.pkl``, which ``torch.save`` never writes.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):  # not a readable zip archive
        return False
