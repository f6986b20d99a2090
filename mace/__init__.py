"""MACE with Magnitude-Modulated Equivariant Adapters (MMEA).

e3nn 0.4.4 reads its bundled ``constants.pt`` with ``torch.load``; torch >= 2.6 defaults
to ``weights_only=True``, which refuses the ``slice`` objects stored there. Allowing
``slice`` here, before any submodule imports e3nn, makes the pinned e3nn work without
environment variables. e3nn also compiles its modules with TorchScript, which newer torch
releases answer with deprecation warnings users cannot act on; those are silenced.
"""
import warnings

import torch

if hasattr(torch.serialization, "add_safe_globals"):
    torch.serialization.add_safe_globals([slice])

for _message in (
    r"`torch\.jit\.(script|save|load|trace|trace_method|trace_module)` is deprecated",
    r"The TorchScript type system doesn't support instance-level annotations",
):
    warnings.filterwarnings("ignore", message=_message)

__version__ = "0.1.0"
