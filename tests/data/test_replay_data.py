"""The data of a replayed pretraining head: its settings, label weights and how often the
fine-tuning configurations are repeated beside it."""
import numpy as np

from mace.data import Configuration
from mace.data.datasets import DataSettings, replay_settings, upsampling_copies, with_label_weights_scaled


def test_fine_tuning_data_is_repeated_as_upstream_when_replay_outnumbers_it() -> None:
    assert upsampling_copies(50, 400, 0.1) == 1  # ratio 0.125 >= 0.1
    assert upsampling_copies(50, 1000, 0.1) == 3  # ratio 0.05: 1 + int(0.1 / 0.05)
    assert upsampling_copies(10, 10000, 0.1) == 101  # ratio 0.001: 1 + 100
    assert upsampling_copies(50, 1000, 0.0) == 1


def test_label_weights_of_replayed_frames_are_scaled_and_absent_labels_stay_zero() -> None:
    frame = Configuration(np.array([1, 8]), np.zeros((2, 3)), energy=-1.0, forces=np.zeros((2, 3)), weight=2.0)
    assert frame.stress_weight == 0.0
    (scaled,) = with_label_weights_scaled([frame], 3.0, "--weight_pt_head")
    assert (scaled.energy_weight, scaled.forces_weight, scaled.stress_weight, scaled.weight) == (3.0, 3.0, 0.0, 2.0)
    assert with_label_weights_scaled([frame], 1.0, "--weight_pt_head")[0] is frame


def test_replay_data_keeps_the_keys_and_split_but_no_tests() -> None:
    settings = DataSettings(train_file="ft.xyz", test_file="test.xyz", energy_key="REF_energy", valid_fraction=0.3, seed=7)
    replay = replay_settings(settings, "pt.xyz", None)
    assert (replay.train_file, replay.valid_file, replay.test_file) == ("pt.xyz", None, None)
    assert (replay.energy_key, replay.valid_fraction, replay.seed) == ("REF_energy", 0.3, 7)

