"""Trainable-parameter counts must equal the reference's (MMEA paper; docs/papers.md).

Model: the MACE-OFF23 medium architecture (off23arch_v035) restricted to H, C, O.
Shapes (channels 128, 3 elements, radial MLP 8-64-64-64, rank r = 16 unless stated):

All weights (full fine-tuning, 751,896):
  node_embedding 3*128 = 384
  interaction 0: linear_up 128^2 = 16,384; radial MLP 8*64+64*64*2+64*512 = 41,472;
      linear 4*128^2 = 65,536; skip_tp 4 paths * 128*3*128 = 196,608
  interaction 1: linear_up 2*128^2 = 32,768; radial MLP 8*64+64*64*2+64*1280 = 90,624;
      linear (256x0e+384x1o+384x2e+256x3o -> 128 each) 1280*128 = 163,840;
      skip_tp 1 path 128*3*128 = 49,152
  products 0: contractions (3*(23+4+1)*128) + (3*(51+6+1)*128) = 33,024; linear 32,768
  products 1: 3*(23+4+1)*128 = 10,752; linear 16,384
  readouts: 128 + (128*16 + 16) = 2,192
  = 751,888 weights + 8 Bessel frequencies (a buffer in the file, a trainable parameter
  once fine-tuning starts, as upstream's foundation loading does) = 751,896.

Shared by ELoRA and MMEA (99,512), with per-path factors r*(rows+cols):
  lower-order contraction weights 3*(4+1)*128 + 3*(6+1)*128 + 3*(4+1)*128 = 6,528
  weights_max A (3, n_params, r) + B (r, 128): (1104+2048) + (2448+2048) + (1104+2048) = 10,800
  radial MLP layers: 16*(8+64) + 2*16*(64+64) + 16*(64+512) | 16*(64+1280): 14,464 + 26,752
  skip_tp paths (384 -> 128): 16*512 * (4 + 1) = 40,960
  Bessel frequencies 8
ELoRA on the 10 o3.Linear (one factor pair per instruction, 76,368):
  node_embedding 16*(3+128) = 2,096; int0 linear_up 4,096, linear 4*4,096;
  int1 linear_up 2*4,096, linear 16*(256+128)*2 + 16*(384+128)*2 = 28,672;
  products 8,192 + 4,096; readouts 16*129 + 16*144 + 16*17 = 4,640   -> 175,880
MMEA gates on the same 10 Linears, every W with a bias (W_h: n0_in->r, W_s: r->gated
channels, W_a: r->n0_out), 51,842:
  node_embedding (3->16, -, 16->128) 64 + 2,176 = 2,240; int0 linear_up 2,064 + 2,176
  = 4,240; int0 linear 2,064 + 6,528 (384 gates) + 2,176 = 10,768; int1 linear_up
  2,064 + 2,176 + 2,176 = 6,416; int1 linear (256 scalars in) 4,112 + 6,528 + 2,176 =
  12,816; products 6,416 + 4,240; readouts 2,064+17, 2,064+272, 272+17 = 4,706
  -> 151,354.  With r = 32 for the gates (low-rank factors stay rank 16): 101,746 + 99,512
  = 201,258.

Upstream's LoRA (0.3.16 ``--lora``, rank r = 4, alpha 1) on the shared foundation
MACE-rMD17x9_c64 (64 channels, L = 1, 2 interactions, radial MLP 8-64-64-64) restricted to
H, C, O: 16,340, the anchor of ../shared/docs/anchors.md. Per o3.Linear r * (input
channels + output channels of the irreps both sides have); per radial MLP layer
r * (h_in + h_out):
  node_embedding 4*(3+64) = 268; int0 linear_up 512, linear (4 irreps) 2,048;
  int1 linear_up 1,024, linear 4*(128+192+192+128) + 4*256 = 3,584;
  radial MLPs 288 + 512 + 512 + 4*(64+256) = 2,592 and 288 + 512 + 512 + 4*(64+640) = 4,128;
  products 1,024 + 512; readouts 4*(64+1) = 260, 4*(64+16) = 320, 4*(16+1) = 68.
The same foundation's anchors of the other methods: MMEA 72,378, ELoRA 84,552, full
fine-tuning 204,440. The same rule on the MACE-OFF23 medium architecture above gives 29,396:
  node_embedding 4*(3+128) = 524; int0 linear_up 1,024, linear 4,096; int1 linear_up 2,048,
  linear 4*(1280+512) = 7,168; radial MLPs 1,312 + 4*(64+512) and 1,312 + 4*(64+1280);
  products 2,048 + 1,024; readouts 4*129 + 4*144 + 4*17 = 1,160.
"""
import copy

import pytest
import torch

from mace.adapters import ELoRAConfig, LoRAConfig, MMEAConfig, count_trainable, inject_adapters, trainable_parameter_table
from mace.modules.loading import load_model
from mace.adapters.foundation import restrict_to_elements
from tests.shared import shared_folder_or_skip

from .conftest import HCO, model_path


@pytest.fixture(scope="module")
def off23_hco() -> torch.nn.Module:
    return restrict_to_elements(load_model(model_path("off23arch_v035"), dtype=torch.float64), HCO)


@pytest.mark.parametrize(
    "method, settings, expected",
    [
        ("mmea", MMEAConfig(rank=16), 151_354),
        ("elora", ELoRAConfig(rank=16), 175_880),
        ("mmea", MMEAConfig(rank=32), 201_258),
        # skip_tp frozen: less its low-rank factors, 384 x 16 + 16 x 128 per path, four paths
        # (l = 0..3) in the first block and one (0e) in the second: 40,960
        ("mmea", MMEAConfig(rank=16, skip_tp="frozen"), 151_354 - 40_960),
        ("mmea", MMEAConfig(rank=32, skip_tp="frozen"), 201_258 - 40_960),
        ("none", None, 751_896),
        ("lora", LoRAConfig(), 29_396),  # upstream's rule (below), no reference run on this model
    ],
)
def test_reference_trainable_counts(off23_hco, method, settings, expected):
    model = inject_adapters(copy.deepcopy(off23_hco), method, settings)
    assert count_trainable(model) == expected
    table = trainable_parameter_table(model)
    assert sum(count for _, count in table) == expected
    assert len({path for path, _ in table}) == len(table)


@pytest.fixture(scope="module")
def rmd17_hco() -> torch.nn.Module:
    """The shared foundation of docs/anchors.md, restricted to aspirin's elements."""
    path = shared_folder_or_skip() / "repro_data" / "foundation_model" / "MACE-rMD17x9_c64.model"
    if not path.is_file():
        pytest.skip(f"{path} not found (python repro_data/fetch.py)")
    return restrict_to_elements(load_model(path, dtype=torch.float64), HCO)


@pytest.mark.parametrize(
    "method, settings, expected",
    [
        ("lora", LoRAConfig(rank=4, alpha=1.0), 16_340),
        ("mmea", MMEAConfig(rank=16), 72_378),
        ("mmea", MMEAConfig(rank=16, skip_tp="frozen"), 72_378 - 2 * (192 * 16 + 16 * 64)),  # two paths
        ("elora", ELoRAConfig(rank=16, alpha=16.0), 84_552),
        ("none", None, 204_440),
    ],
)
def test_anchor_trainable_counts_on_the_shared_foundation(rmd17_hco, method, settings, expected):
    model = inject_adapters(copy.deepcopy(rmd17_hco), method, settings)
    assert count_trainable(model) == expected
    assert sum(count for _, count in trainable_parameter_table(model)) == expected


def test_lora_count_per_module_on_the_shared_foundation(rmd17_hco):
    rows = dict(trainable_parameter_table(inject_adapters(copy.deepcopy(rmd17_hco), "lora", LoRAConfig())))
    assert rows["node_embedding.linear"] == 268
    assert rows["interactions.1.linear"] == 3_584
    assert rows["interactions.1.conv_tp_weights.layer3"] == 2_816
    assert rows["readouts.1.linear_2"] == 68
    assert not any("skip_tp" in path or "symmetric" in path or "bessel" in path for path in rows)


def test_full_fine_tuning_trains_every_parameter(off23_hco):
    model = inject_adapters(copy.deepcopy(off23_hco), "none")
    assert count_trainable(model) == sum(p.numel() for p in model.parameters())


def test_table_names_the_adapted_modules(off23_hco):
    rows = dict(trainable_parameter_table(inject_adapters(copy.deepcopy(off23_hco), "mmea")))
    assert rows["node_embedding.linear"] == 2_240
    assert rows["interactions.1.linear"] == 12_816
    assert rows["interactions.0.skip_tp"] == 32_768
    frozen = dict(trainable_parameter_table(
        inject_adapters(copy.deepcopy(off23_hco), "mmea", MMEAConfig(skip_tp="frozen"))))
    assert not any("skip_tp" in path for path in frozen)
    assert {path: count for path, count in rows.items() if "skip_tp" not in path} == frozen
    assert rows["radial_embedding.bessel_fn"] == 8
