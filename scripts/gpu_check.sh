#!/usr/bin/env bash
# GPU check, for a person with a CUDA GPU: resnet50, bf16, channels_last, torch.compile,
# deterministic=false, 2 epochs on fake 224x224 data; images per second of the template
# against a plain loop on the same model (bench/gpu_plain.py). The last epoch counts (the
# first includes compilation). Usage: bash scripts/gpu_check.sh [FAKE_SIZE] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-2560}
BATCH=${2:-128}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0), torch.__version__)"
python train.py device=cuda base_model=resnet50 dataset=fake image_size=224 fake_size="$SIZE" batch_size="$BATCH" \
  amp=bf16 channels_last=true compile=true deterministic=false augment=none epochs=2 num_workers=4 progress=false
python bench/gpu_plain.py --size "$SIZE" --batch "$BATCH" --epochs 2
python - "$SIZE" "$BATCH" <<'PY'
import json, sys
from pathlib import Path
size, batch = int(sys.argv[1]), int(sys.argv[2])
runs = sorted((json.loads(p.read_text()) for p in Path("experiments").glob("*/run.json")), key=lambda r: r["start_utc"])
run = runs[-1]
rows = Path(f"experiments/{run['id']}/metrics.csv").read_text().splitlines()
seconds = float(rows[-1].split(",")[-1])
images = run["train_size"] // batch * batch
print(f"template epoch {len(rows) - 1}: {images / seconds:.1f} img/s ({seconds:.2f} s), run {run['id']}")
PY
