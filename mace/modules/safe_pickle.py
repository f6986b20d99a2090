"""A pickle module that reads MACE model files without running code taken from them.

A model file is ``torch.save(model)``: a pickle naming the globals (classes, functions) that
unpickling calls, so an ordinary ``torch.load`` runs whatever a crafted file names
(``os.system`` ...). :func:`safe_torch_load` passes this module to ``torch.load`` as its
pickle module. Its :class:`Unpickler` admits only the globals MACE models are made of
(:func:`admitted_globals`: our model classes, the e3nn 0.4.4 classes upstream's and our
models hold, torch's tensor rebuilders, containers and activations, pure-data builtins),
refuses any other with :class:`ForbiddenGlobal` naming it, and sets the state only of
objects of admitted classes.

Two kinds of state in these files are code, and neither is run:

- e3nn's compiled kernels. ``o3.Linear``, ``o3.TensorProduct`` and ``nn.Extract`` (inside a
  gated non-linearity; all e3nn's ``CodeGenMixin``) pickle the kernels their constructor
  generated as TorchScript archives (bytes under ``__codegen__``) that e3nn's
  ``__setstate__`` hands to ``torch.jit.load``, which compiles the archive's code (run at
  every forward, and TorchScript can call any registered op).
  Here the bytes never reach e3nn: the kernels are generated again from the module's own
  irreps and instructions by e3nn's code generator, as its constructor does, and only the
  kernels' tensor constants are read from the archive, as data
  (:func:`regenerate_e3nn_kernels`). ``TensorProduct.right``, which MACE never calls and
  e3nn compiles only on request, gets e3nn's uncompiled stand-in (an assertion).
- torch.fx GraphModules. Upstream's ``Contraction`` keeps opt_einsum graphs that our
  forward does not use; a GraphModule pickles Python source that
  ``torch.fx.graph_module.reduce_graph_module`` passes to ``exec``. That function is
  replaced by one returning an inert :class:`DiscardedGraphModule`, removed after loading.

Files that ``torch.load`` would hand to other readers (legacy pre-zip pickles, TorchScript
archives) are refused.
"""
import contextlib
import functools
import importlib
import inspect
import io
import pickle
import pkgutil
import sys
import zipfile
from collections import OrderedDict
from typing import Any, Dict, FrozenSet, Iterator, Tuple, Union

import e3nn
import torch
from e3nn import o3
from e3nn.nn import Extract
from e3nn.o3._linear import _codegen_linear
from e3nn.o3._tensor_product._codegen import codegen_tensor_product_left_right
from e3nn.util.codegen import CodeGenMixin
from torch import fx

# The e3nn, torch and Python globals of upstream 0.3.5 / 0.3.16 and our model files, by module.
_ADMITTED: Dict[str, Tuple[str, ...]] = {
    "e3nn.o3._irreps": ("Irrep", "Irreps", "_MulIr"),
    "e3nn.o3._linear": ("Linear", "Instruction"),
    "e3nn.o3._tensor_product._tensor_product": ("TensorProduct",),
    "e3nn.o3._tensor_product._sub": ("FullyConnectedTensorProduct", "ElementwiseTensorProduct"),
    "e3nn.o3._tensor_product._instruction": ("Instruction",),
    "e3nn.o3._spherical_harmonics": ("SphericalHarmonics",),
    "e3nn.nn._fc": ("FullyConnectedNet", "_Layer"),
    "e3nn.nn._activation": ("Activation",),
    "e3nn.nn._gate": ("Gate", "_Sortcut"),
    "e3nn.nn._extract": ("Extract",),
    "e3nn.math._normalize_activation": ("normalize2mom",),
    "torch._utils": ("_rebuild_tensor_v2", "_rebuild_parameter"),
    "torch.nn.modules.container": ("ModuleList", "ParameterList", "Sequential"),
    "torch.nn.modules.linear": ("Linear",),
    "torch.nn.modules.normalization": ("LayerNorm",),
    "torch.nn.modules.activation": ("SiLU",),
    "torch.nn.functional": ("silu", "tanh", "sigmoid"),
    "collections": ("OrderedDict",),
    "builtins": ("set", "frozenset", "slice"),
    "_codecs": ("encode",),  # how pickle protocol 2 writes bytes
}
# Where our model classes live: every torch.nn.Module subclass defined in these packages.
_MODEL_PACKAGES = ("mace.modules", "mace.adapters")
# torch.tanh and torch.abs (gates upstream offers) pickle as
# getattr(torch._C._VariableFunctionsClass, name): that getattr is all getattr may do.
_TORCH_FUNCTIONS = ("tanh", "abs")


class ForbiddenGlobal(pickle.UnpicklingError):
    """The file names a global that no MACE model holds (``name``: module.qualified_name)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"refers to {name}, which is not part of a MACE model")
        self.name = name


class DiscardedGraphModule(torch.nn.Module):
    """Stands where a file held a torch.fx GraphModule, whose pickled source is never run."""


class _Placeholder:
    """A global a file names only as an argument of a call that is never made."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_VARIABLE_FUNCTIONS = _Placeholder("torch._C._VariableFunctionsClass")


def _discard_graph_module(*_: Any) -> DiscardedGraphModule:
    return DiscardedGraphModule()


def _torch_function(owner: Any, name: Any) -> Any:
    if owner is not _VARIABLE_FUNCTIONS or name not in _TORCH_FUNCTIONS:
        raise ForbiddenGlobal(f"builtins.getattr({owner!r}, {name!r})")
    return getattr(torch, name)


_SUBSTITUTES: Dict[str, Any] = {
    "torch.fx.graph_module.reduce_graph_module": _discard_graph_module,
    "torch.fx._symbolic_trace.Tracer": _Placeholder("torch.fx._symbolic_trace.Tracer"),
    "torch._C._VariableFunctionsClass": _VARIABLE_FUNCTIONS,
    "builtins.getattr": _torch_function,
}


def _model_classes() -> Dict[str, type]:
    """Every torch.nn.Module subclass defined in our model packages, by its import path."""
    classes = {}
    for package_name in _MODEL_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__, prefix=f"{package_name}."):
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if inspect.isclass(value) and issubclass(value, torch.nn.Module) and value.__module__ == info.name:
                    classes[f"{info.name}.{name}"] = value
    return classes


@functools.lru_cache(maxsize=None)
def admitted_globals() -> Dict[str, Any]:
    """Full name (module.name) -> the object unpickling gets for it; nothing else is admitted."""
    admitted = {
        f"{module}.{name}": getattr(importlib.import_module(module), name)
        for module, names in _ADMITTED.items()
        for name in names
    }
    admitted.update(_model_classes())
    admitted.update(_SUBSTITUTES)
    return admitted


@functools.lru_cache(maxsize=None)
def _admitted_classes() -> FrozenSet[type]:
    return frozenset(value for value in admitted_globals().values() if inspect.isclass(value))


def _uncompiled_right_kernel() -> fx.GraphModule:
    """``TensorProduct.right`` as e3nn leaves it unless asked to compile it: an assertion."""
    graph = fx.Graph()
    graph.placeholder("x2", torch.Tensor)
    graph.placeholder("w", torch.Tensor)
    graph.call_function(torch._assert, args=(False, "TensorProduct.right is not compiled in a loaded model"))
    return fx.GraphModule(torch.nn.Module(), graph, class_name="tp_right")


@contextlib.contextmanager
def _uncompiled_kernels() -> Iterator[None]:
    """e3nn modules built inside keep their generated kernels as torch.fx graphs (what
    ``_codegen_register`` takes), instead of compiling them to TorchScript."""
    previous = e3nn.get_optimization_defaults()["jit_script_fx"]
    e3nn.set_optimization_defaults(jit_script_fx=False)
    try:
        yield
    finally:
        e3nn.set_optimization_defaults(jit_script_fx=previous)


def _generated_kernels(module: CodeGenMixin) -> Dict[str, fx.GraphModule]:
    """The kernels of an o3.TensorProduct, o3.Linear or e3nn.nn.Extract (inside a Gate),
    generated from its own settings by the calls its constructor makes (MACE builds every
    o3.Linear without f_in / f_out)."""
    if isinstance(module, Extract):
        with _uncompiled_kernels():
            twin = Extract(module.irreps_in, module.irreps_outs, module.instructions)
        return {name: getattr(twin, name) for name in twin.__codegen__}
    if isinstance(module, o3.TensorProduct):
        left_right = codegen_tensor_product_left_right(
            module.irreps_in1, module.irreps_in2, module.irreps_out, module.instructions,
            module.shared_weights, module._specialized_code, module._optimize_einsums,
        )
        return {"_compiled_main_left_right": left_right, "_compiled_main_right": _uncompiled_right_kernel()}
    graph, _, _ = _codegen_linear(
        module.irreps_in, module.irreps_out, module.instructions,
        shared_weights=module.shared_weights, optimize_einsums=module._optimize_einsums,
    )
    return {"_compiled_main": graph}


class _ScriptedModule:
    """The pickled top object of a TorchScript archive: only its attributes are kept."""

    def __setstate__(self, attributes: Dict[str, Any]) -> None:
        self.attributes = attributes


class _KernelArchiveUnpickler(pickle.Unpickler):
    """Reads the tensor attributes of a pickled e3nn kernel, a TorchScript archive (data.pkl
    and data/N), as data: its code is never compiled. The globals it hands out are bound
    methods, whose attributes a crafted BUILD cannot change."""

    def __init__(self, archive: zipfile.ZipFile, root: str) -> None:
        self.archive, self.root = archive, root
        super().__init__(io.BytesIO(self._stored("data.pkl")))

    def _stored(self, name: str) -> bytes:
        info = self.archive.getinfo(f"{self.root}/{name}")
        if info.compress_type != zipfile.ZIP_STORED:  # torch stores these; no zip bombs
            raise pickle.UnpicklingError(f"compressed {name} in an e3nn kernel")
        return self.archive.read(info)

    def _rebuild_tensor(
        self, storage: torch.Tensor, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...], *_: Any
    ) -> torch.Tensor:
        return storage.as_strided(size, stride, offset).clone()

    def _untagged(self, value: Any, _type: str) -> Any:
        return value

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__."):
            return _ScriptedModule
        if module == "torch" and name.endswith("Storage"):
            return torch.serialization.StorageType(name).dtype
        known = {
            "torch._utils._rebuild_tensor_v2": self._rebuild_tensor,
            "torch.jit._pickle.restore_type_tag": self._untagged,
            "collections.OrderedDict": OrderedDict,
        }
        if f"{module}.{name}" not in known:
            raise ForbiddenGlobal(f"{module}.{name} (in an e3nn kernel)")
        return known[f"{module}.{name}"]

    def persistent_load(self, persistent_id: Tuple[Any, ...]) -> torch.Tensor:
        _, dtype, key, *_ = persistent_id
        return torch.frombuffer(bytearray(self._stored(f"data/{key}")), dtype=dtype)


def _archived_constants(kernel_archive: bytes) -> Dict[str, torch.Tensor]:
    """The tensor attributes (Wigner 3j blocks, index tables) of a pickled e3nn kernel."""
    with zipfile.ZipFile(io.BytesIO(kernel_archive)) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        scripted = _KernelArchiveUnpickler(archive, root).load()
    return {name: value for name, value in scripted.attributes.items() if isinstance(value, torch.Tensor)}


def _restore_constants(kernel: torch.nn.Module, constants: Dict[str, torch.Tensor]) -> None:
    buffers = dict(kernel.named_buffers())
    for name, value in constants.items():
        if name in buffers:
            if buffers[name].shape != value.shape:
                raise pickle.UnpicklingError(f"e3nn kernel constant {name} has shape {tuple(value.shape)}")
            setattr(kernel, name, value)


def regenerate_e3nn_kernels(module: CodeGenMixin, kernel_archives: Dict[str, bytes]) -> None:
    """Give an unpickled e3nn module freshly generated kernels holding the file's constants.

    The constants (Wigner 3j blocks) are data, but their values depend on the dtype the
    writer built the model in (computed in float32 and later cast, they differ from float64
    ones by ~1e-8): taking them from the file keeps predictions identical to a plain load.
    """
    module._codegen_register(_generated_kernels(module))
    for kernel_name in module.__codegen__:
        if kernel_name in kernel_archives:
            _restore_constants(getattr(module, kernel_name), _archived_constants(kernel_archives[kernel_name]))


class Unpickler(pickle._Unpickler):
    """pickle's Python unpickler (whose BUILD can be intercepted), restricted as described above."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        full_name = f"{'builtins' if module == '__builtin__' else module}.{name}"
        admitted = admitted_globals()
        if full_name not in admitted:
            raise ForbiddenGlobal(full_name)
        return admitted[full_name]

    def load_build(self) -> None:
        """Set the state of an object of an admitted class; e3nn kernels are regenerated."""
        target, state = self.stack[-2], self.stack[-1]
        if type(target) not in _admitted_classes():
            raise pickle.UnpicklingError(f"sets the state of {target!r:.80}, which a MACE model never does")
        compiled = isinstance(target, CodeGenMixin) and isinstance(state, dict)
        if compiled:
            self.stack[-1] = {key: value for key, value in state.items() if key != "__codegen__"}
        super().load_build()
        if compiled:
            regenerate_e3nn_kernels(target, state.get("__codegen__") or {})

    dispatch[pickle.BUILD[0]] = load_build


def _without_discarded_graphs(model: Any) -> Any:
    """Remove the stand-ins of upstream's unused torch.fx graphs from the loaded model."""
    if isinstance(model, torch.nn.Module):
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, DiscardedGraphModule):
                    delattr(parent, name)
    return model


def _check_archive(data: bytes) -> None:
    """Only torch.save's zip layout (torch tells it by these first bytes); torch.load would
    hand a legacy file to other readers and a TorchScript archive to torch.jit.load."""
    if not data.startswith(b"PK\x03\x04"):
        raise pickle.UnpicklingError("is not a zip archive written by torch.save")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        if any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist()):
            raise pickle.UnpicklingError("is a TorchScript archive, not a torch.save of a model")


def safe_torch_load(data: bytes, map_location: Union[str, torch.device]) -> Any:
    """Unpickle the bytes of a model file with this module; raises pickle.UnpicklingError and
    whatever torch raises for a damaged archive."""
    _check_archive(data)
    this_module = sys.modules[__name__]
    loaded = torch.load(io.BytesIO(data), map_location=map_location, pickle_module=this_module, weights_only=False)
    return _without_discarded_graphs(loaded)
