"""Upstream's ``mace.tools`` names, for scripts written against upstream MACE.

A face only: nothing inside this package imports it, and it holds no code of its own; each
name lives in the layer it belongs to (``mace.core``, ``mace.data``, ``mace.training``,
``mace.cli``).
"""
from mace.cli.arg_parser import build_parser as build_default_arg_parser
from mace.core.atomic_numbers import AtomicNumberTable, atomic_number_table_from_zs, to_one_hot
from mace.core.torch_setup import set_seeds
from mace.training.checkpoint import CheckpointHandler
from mace.tools import torch_geometric

__all__ = [
    "AtomicNumberTable",
    "CheckpointHandler",
    "atomic_number_table_from_zs",
    "build_default_arg_parser",
    "set_seeds",
    "to_one_hot",
    "torch_geometric",
]
