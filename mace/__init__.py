"""MACE with Magnitude-Modulated Equivariant Adapters (MMEA).

e3nn 0.4.4 reads its bundled ``constants.pt`` with ``torch.load``; torch >= 2.6 defaults
to ``weights_only=True``, which refuses the ``slice`` objects stored there. Allowing
``slice`` here, before any submodule imports e3nn, makes the pinned e3nn work without
environment variables.
"""
import torch

if hasattr(torch.serialization, "add_safe_globals"):
    torch.serialization.add_safe_globals([slice])

__version__ = "0.1.0"
