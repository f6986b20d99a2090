"""The statistics file of preprocessed data: upstream's JSON, read exactly, in every form
upstream's preprocess_data writes it."""
import json

import pytest

from mace.core.errors import UserInputError
from mace.data.statistics import DataStatistics, read_statistics, write_statistics

STATISTICS = DataStatistics(
    atomic_energies={1: -13.587222780835477, 6: -1029.4889999855063, 8: -2042.0330099956639},
    avg_num_neighbors=10.455026455026456, mean=8.084399397030132e-13, std=1.284616259215289,
    atomic_numbers=[1, 6, 8], r_max=4.0,
)


def test_round_trip_is_exact_and_in_upstreams_format(tmp_path):
    write_statistics(tmp_path / "statistics.json", STATISTICS)
    raw = json.loads((tmp_path / "statistics.json").read_text())
    assert raw["atomic_energies"] == "{1: -13.587222780835477, 6: -1029.4889999855063, 8: -2042.0330099956639}"
    assert raw["atomic_numbers"] == "[1, 6, 8]" and raw["r_max"] == 4.0
    assert read_statistics(tmp_path / "statistics.json") == STATISTICS


def test_reads_upstreams_file_with_numpy_scalars_in_its_literal(tmp_path):
    """Upstream 0.3.16 under numpy 2 writes str() of a dict of numpy scalars."""
    text = ('{"atomic_energies": "{np.int64(1): np.float64(-875.4168835080958), np.int64(8): np.float64(-437.7)}", '
            '"avg_num_neighbors": 10.454761981964111, "mean": 0.00023483997210860252, '
            '"std": 1.2890666723251343, "atomic_numbers": "[1, 8]", "r_max": 4.0}')
    (tmp_path / "statistics.json").write_text(text)
    statistics = read_statistics(tmp_path / "statistics.json")
    assert statistics.atomic_energies == {1: -875.4168835080958, 8: -437.7}
    assert statistics.atomic_numbers == [1, 8] and statistics.std == 1.2890666723251343


def test_reads_json_native_values_and_an_e0s_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "e0s.json").write_text(json.dumps("{1: -1.5, 8: -2.5}"))
    raw = {"atomic_energies": "e0s.json", "avg_num_neighbors": 3, "mean": 0.0, "std": 1.0, "atomic_numbers": [8, 1]}
    (tmp_path / "statistics.json").write_text(json.dumps(raw))
    statistics = read_statistics("statistics.json")
    assert statistics.atomic_energies == {1: -1.5, 8: -2.5} and statistics.atomic_numbers == [1, 8]
    assert statistics.r_max is None and statistics.avg_num_neighbors == 3.0
    raw["atomic_energies"] = {"1": -1.5, "8": -2.5}
    (tmp_path / "statistics.json").write_text(json.dumps(raw))
    assert read_statistics("statistics.json").atomic_energies == {1: -1.5, 8: -2.5}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mean": None}, "'mean' is None, not a number"),
        ({"std": float("nan")}, "'std' is nan"),
        ({"atomic_energies": "{1: oops}"}, "'atomic_energies' is not a valid literal"),
        ({"atomic_energies": "[1, 2]"}, "'atomic_energies' must map"),
        ({"atomic_numbers": "[1.5]"}, "'atomic_numbers' must be a list of integers"),
    ],
)
def test_bad_values_are_named(tmp_path, change, message):
    raw = {**STATISTICS.to_json(), **change}
    (tmp_path / "s.json").write_text(json.dumps(raw))
    with pytest.raises(UserInputError, match=message):
        read_statistics(tmp_path / "s.json")


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(UserInputError, match="cannot read the statistics file"):
        read_statistics(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserInputError, match="not valid JSON"):
        read_statistics(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"mean": 0.0}))
    with pytest.raises(UserInputError, match="lacks atomic_energies, avg_num_neighbors, std, atomic_numbers"):
        read_statistics(tmp_path / "partial.json")
