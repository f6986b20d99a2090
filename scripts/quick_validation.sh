#!/usr/bin/env bash
# Quick validation on a CPU: install, fetch the data and the shared foundation model, then
# fine-tune it on rMD17 aspirin with MMEA using the seed's flags (a few epochs instead of 500).
# The flags come from benchmarks/protocols.py, where the seed's command is kept as data.
#   EPOCHS=5 DEVICE=cpu bash scripts/quick_validation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-5}
DEVICE=${DEVICE:-cpu}
FOUNDATION=${FOUNDATION:-repro_data/foundation_model/MACE-rMD17x9_c64.model}

python -c "import torch" 2>/dev/null || python -m pip install torch==2.13.0
python -m pip install --quiet -e ".[dev]"
python repro_data/fetch.py

# The seed command with this run's epochs, device and foundation, quoted for the shell.
FLAGS=$(python benchmarks/protocols.py max_num_epochs="$EPOCHS" device="$DEVICE" foundation_model="$FOUNDATION")
eval "python -m mace.cli.run_train $FLAGS"
