#!/usr/bin/env bash
# Pretrain the small shared foundation model (MACE-rMD17x9_c64) with this repository's trainer.
#
#   python repro_data/pretrain/make_pretrain_sets.py      # once: writes the two .xyz files
#   bash repro_data/pretrain/pretrain.sh [extra run_train flags, e.g. --device=cuda]
#
# Hyperparameters are those of the shared recipe (15 epochs, batch 10, lr 0.01 with AMSGrad,
# EMA 0.99, plateau patience 2, SWA stage from epoch 11, seed 1, float32).  Environment:
#   PRETRAIN_DIR  folder holding pretrain_train.xyz / pretrain_valid.xyz and receiving the
#                 outputs (default: this folder; logs/, checkpoints/, results/ and *.model are
#                 git-ignored)
#   PYTHON        interpreter to use (default: python)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="${PRETRAIN_DIR:-$here}"
python="${PYTHON:-python}"
name="MACE-rMD17x9_c64"

for file in pretrain_train.xyz pretrain_valid.xyz; do
  if [[ ! -f "$work/$file" ]]; then
    echo "pretrain.sh: $work/$file not found." >&2
    echo "  Build it first: $python repro_data/pretrain/make_pretrain_sets.py --out $work" >&2
    exit 1
  fi
done

cd "$work"
# run the package from this checkout even when it is not pip-installed
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

"$python" -m mace.cli.run_train \
  --name="$name" --seed=1 --device=cpu --default_dtype=float32 \
  --train_file=pretrain_train.xyz --valid_file=pretrain_valid.xyz \
  --energy_key=REF_energy --forces_key=REF_forces --E0s=average \
  --model=ScaleShiftMACE --num_channels=64 --max_L=1 --correlation=3 --r_max=5.0 \
  --num_interactions=2 --batch_size=10 --valid_batch_size=30 \
  --lr=0.01 --amsgrad --ema --ema_decay=0.99 --scheduler_patience=2 \
  --max_num_epochs=15 --swa --start_swa=11 --eval_interval=1 --save_cpu "$@"

# The shared file is the SWA-stage model in float64; make the same conversion.
swa="${name}_swa.model"
if [[ -f "$swa" ]]; then
  "$python" - "$swa" "${name}_swa_float64.model" <<'PY'
import sys

import torch

import mace  # noqa: F401  (registers the classes the pickle names)

source, target = sys.argv[1], sys.argv[2]
model = torch.load(source, map_location="cpu", weights_only=False)  # our own file
torch.save(model.double(), target)
print(f"wrote {target} (float64 copy of {source})")
PY
fi
