#!/usr/bin/env bash
# Quick validation on a CPU: install, fetch the data and the shared foundation model, then
# fine-tune it on rMD17 aspirin with MMEA using the seed's flags (a few epochs instead of 500).
#   EPOCHS=5 DEVICE=cpu bash scripts/quick_validation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-5}
DEVICE=${DEVICE:-cpu}
FOUNDATION=${FOUNDATION:-repro_data/foundation_model/MACE-rMD17x9_c64.model}

python -c "import torch" 2>/dev/null || python -m pip install torch==2.13.0
python -m pip install --quiet -e ".[dev]"
python repro_data/fetch.py

python -m mace.cli.run_train --name="rmd17-Aspirin" \
  --train_file="repro_data/dataset/dataset_rmd17/revised_aspirin/train.xyz" --valid_fraction=0.5 \
  --test_file="repro_data/dataset/dataset_rmd17/revised_aspirin/test.xyz" --E0s="average" \
  --model="MACE" --loss="ef" --num_interactions=2 --num_channels=128 --max_L=1 --correlation=3 \
  --r_max=5.0 --lr=0.005 --forces_weight=1000 --energy_weight=1 --weight_decay=1e-8 --clip_grad=100 \
  --batch_size=5 --valid_batch_size=5 --max_num_epochs="$EPOCHS" --scheduler_patience=5 --ema \
  --ema_decay=0.995 --swa --start_swa=400 --error_table="TotalMAE" --default_dtype="float64" \
  --device="$DEVICE" --seed=123 --save_cpu --energy_key="REF_energy" --forces_key="REF_forces" \
  --foundation_model="$FOUNDATION"
