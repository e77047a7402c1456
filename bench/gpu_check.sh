#!/usr/bin/env bash
# Issue 13, item 7: MI-UE with ResNet-18 on all 60,000 Fashion-MNIST training images on one
# GPU, with the paper's schedule (preset paper-cifar10: batch 512, source lr 0.5, PGD-10 at
# 0.2/255, crop+flip for the source model) for as many epochs as fit one short call. Then a
# ResNet-18 victim (preset paper-st, shortened to VICTIM_EPOCHS) is trained on the clean
# and on the protected images, and the generation throughput is timed in fp32 and in bf16 +
# channels_last. Prints one JSON line at the end, also written to $OUT/gpu_check.jsonl.
#
# On the device tool, with the data carried in .data/ (which .git/info/exclude ignores):
#   mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/ && echo /.data/ >> .git/info/exclude
#   run(command="bash bench/gpu_check.sh", carry=[".data"], timeout_s=560)
# The package runs from src/ with the machine's own PyTorch; nothing is installed there.
# Smoke test on the CPU (tiny sizes: it checks the script, not the numbers):
#   PY=.venv/bin/python DEVICE=cpu SUBSET=200 GEN_BUDGET_S=20 VICTIM_EPOCHS=1 SPEED_SUBSET=100 \
#     UNLEARNABLE_FMNIST_DIR=/usr/share/datasets/fashion-mnist bash bench/gpu_check.sh
set -euo pipefail
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-auto}           # generation epochs (the paper runs 100); auto: as many as fit GEN_BUDGET_S
GEN_BUDGET_S=${GEN_BUDGET_S:-180}
VICTIM_EPOCHS=${VICTIM_EPOCHS:-6} # the paper's victim runs 200
SUBSET=${SUBSET:-}               # empty: all 60,000 training images
SPEED_SUBSET=${SPEED_SUBSET:-10000}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export UNLEARNABLE_FMNIST_DIR=${UNLEARNABLE_FMNIST_DIR:-$PWD/.data/fashion-mnist}
cli() { "$PY" -m unlearnable.cli -q "$@"; }
subset=(); [ -n "$SUBSET" ] && subset=(--subset "$SUBSET")

nvidia-smi -L 2>/dev/null || true
# Throughput: one generation epoch (a source pass and 10 PGD steps per image) on the same
# subset in fp32 and in bf16 + channels_last, each in its own process (warm-up included).
for prec in fp32 bf16-cl; do
  flags=(); [ "$prec" = bf16-cl ] && flags=(--bf16 --channels-last)
  cli poison --method mi-ue --data fashion-mnist --subset "$SPEED_SUBSET" --preset paper-cifar10 --epochs 1 \
    --device "$DEVICE" "${flags[@]}" --out "$WORK/speed-$prec"
  echo "speed $prec: done"
done
if [ "$EPOCHS" = auto ]; then  # the bf16 epoch's seconds per image, scaled to the training set
  EPOCHS=$("$PY" -c 'import json, sys
per_image = json.load(open(sys.argv[1]))["timings"]["generate_s"] / int(sys.argv[2])
print(max(1, int(float(sys.argv[4]) // (per_image * int(sys.argv[3])))))' \
    "$WORK/speed-bf16-cl/manifest.json" "$SPEED_SUBSET" "${SUBSET:-60000}" "$GEN_BUDGET_S")
fi
echo "generation epochs: $EPOCHS"
cli poison --method mi-ue --data fashion-mnist "${subset[@]}" --preset paper-cifar10 --epochs "$EPOCHS" \
  --device "$DEVICE" --bf16 --channels-last --out "$WORK/poisoned"
echo "generation: done"
for set in clean poisoned; do
  data=fashion-mnist; [ "$set" = poisoned ] && data="$WORK/poisoned"
  extra=(); [ "$set" = clean ] && extra=("${subset[@]}")
  cli train --data "$data" "${extra[@]}" --preset paper-st --epochs "$VICTIM_EPOCHS" --device "$DEVICE" --bf16 \
    --out "$WORK/victim-$set"
  echo "victim on $set: done"
done

"$PY" - "$WORK" "${OUT:+$OUT/gpu_check.jsonl}" "$DEVICE" "$EPOCHS" "$VICTIM_EPOCHS" "$SPEED_SUBSET" <<'EOF'
import json, sys
from pathlib import Path
import torch
work, dest, device, epochs, victim_epochs, speed_n = Path(sys.argv[1]), sys.argv[2], *sys.argv[3:]
manifest = lambda d: json.loads((work / d / "manifest.json").read_text())
metrics = lambda d: json.loads((work / d / "metrics.json").read_text())
speed = {p: manifest(f"speed-{p}")["timings"]["generate_s"] for p in ("fp32", "bf16-cl")}
gen = manifest("poisoned")
clean, poisoned = metrics("victim-clean"), metrics("victim-poisoned")
line = {
    "bench": "gpu_check", "device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
    "torch": torch.__version__, "train_images": gen["counts"]["train"], "generation_epochs": int(epochs),
    "victim": "resnet-18 paper-st", "victim_epochs": int(victim_epochs),
    "clean_acc": clean["test_acc"], "mi_ue_acc": poisoned["test_acc"],
    "clean_best_acc": clean["best_test_acc"], "mi_ue_best_acc": poisoned["best_test_acc"],
    "generate_s": gen["timings"]["generate_s"], "linf_255": gen["linf_255"],
    "speed_images": int(speed_n), "speed_epoch_s": speed,
    "images_per_s": {p: round(int(speed_n) / s, 1) for p, s in speed.items()},
    "bf16_cl_speedup": round(speed["fp32"] / speed["bf16-cl"], 3),
}
text = json.dumps(line)
print(text)
if dest:  # the device tool's $OUT: the line comes back as a file too
    with open(dest, "a") as f:
        f.write(text + "\n")
EOF
