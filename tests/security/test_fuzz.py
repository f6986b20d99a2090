"""Damaged copies of a small model file: one clear error each, or finite predictions.

24 copies of a model file written by us: truncated, and with one byte changed in the
pickle (data.pkl) or in one tensor's data. torch does not check the zip's CRCs, so the
changed bytes reach the unpickler and the model as they are.
"""
import io
import random
import struct
import zipfile
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch

from mace.modules.loading import load_model, save_model
from mace.core.errors import UserInputError
from mace.modules.predict import predict
from tests.security.payloads import molecule, small_model

TRUNCATED_FRACTIONS = (0.0, 0.001, 0.01, 0.3, 0.7, 0.9999)
SEEDS = range(9)


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("genuine") / "small.model"
    save_model(small_model(), path)
    return path.read_bytes()


def record_spans(data: bytes, kind: str) -> List[Tuple[int, int]]:
    """Byte ranges (start, end) of the non-empty zip records of the pickle or of tensor data."""
    wanted = (lambda name: name.endswith("/data.pkl")) if kind == "pickle" else (lambda name: "/data/" in name)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        records = [info for info in archive.infolist() if wanted(info.filename) and info.file_size]
    spans = []
    for info in records:
        name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
        start = info.header_offset + 30 + name_length + extra_length
        spans.append((start, start + info.file_size))
    return spans


def changed_byte(data: bytes, spans: List[Tuple[int, int]], seed: int) -> bytes:
    rng = random.Random(seed)
    start, end = rng.choice(spans)
    damaged = bytearray(data)
    damaged[rng.randrange(start, end)] ^= rng.randrange(1, 256)
    return bytes(damaged)


def damaged_copy(genuine: bytes, kind: str, index: int) -> bytes:
    if kind == "truncated":
        return genuine[: int(len(genuine) * TRUNCATED_FRACTIONS[index])]
    return changed_byte(genuine, record_spans(genuine, kind), index)


CASES = (
    [("truncated", i) for i in range(len(TRUNCATED_FRACTIONS))]
    + [("pickle", seed) for seed in SEEDS]
    + [("tensor", seed) for seed in SEEDS]
)


@pytest.mark.parametrize("kind, index", CASES, ids=[f"{kind}-{index}" for kind, index in CASES])
def test_damaged_file_gives_one_clear_error_or_finite_predictions(
    genuine: bytes, tmp_path: Path, kind: str, index: int
) -> None:
    path = tmp_path / "damaged.model"
    path.write_bytes(damaged_copy(genuine, kind, index))
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.jit.optimized_execution(False):
            model = load_model(path)
            (prediction,) = predict(model, [molecule()])
    except UserInputError as error:
        assert "\n" not in str(error)
        return
    finally:
        torch.set_default_dtype(dtype)
    assert np.isfinite(prediction.energy) and np.isfinite(prediction.forces).all()
