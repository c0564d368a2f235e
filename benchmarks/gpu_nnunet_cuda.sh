#!/usr/bin/env bash
# Issue #19 on a lent GPU, in ONE device call: an imported nnU-Net v2 model (nnU-Net's default
# 3d_fullres plan, built on the device by nnunetv2 itself) predicted on cuda by TumorSeg and by
# nnUNetPredictor, without and with mirroring (benchmarks/nnunet_vs_tumorseg.py --device cuda):
# speed, peak host memory and the label Dice between the two. This is the first run of
# TumorSeg's nnU-Net GPU path (autocast as nnU-Net; sums on the host), which CI cannot test.
#
#   here, once: bash benchmarks/device_wheels.sh nnunet   (SimpleITK -> .whl/simpleitk, nnunetv2 and its needs -> .whl/nnunet)
#   on the device: two calls in a row, the second running this script (the commands are in that file's header)
#   knobs (env): DEVICE (cuda), SIZE ("256 256 160", the issue's), REPEATS (3), MIRRORS ("no-mirror mirror"),
#   TRAIN_SIZE ("224 224 160": nnU-Net's realistic 128^3 plan; small values give a tiny plan), WORK, OUT.
#
# $OUT gets one JSON per mirroring setting (both tools' runs, medians, Dice, the GPU's name),
# the runs' log and summary.txt. Building the model (plan, preprocessing, a perturbed
# checkpoint) takes ~1-3 min on 16 cores; each GPU run well under a minute.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # the repository root

PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-256 256 160}
REPEATS=${REPEATS:-3}
MIRRORS=${MIRRORS:-no-mirror mirror}
TRAIN_SIZE=${TRAIN_SIZE:-224 224 160}
WORK=${WORK:-/tmp/gpu-nnunet}
OUT=${OUT:-$WORK/out}
mkdir -p "$WORK" "$OUT"
export PYTHONUNBUFFERED=1 TUMORSEG_CACHE="$WORK/cache"
started=$SECONDS
stage() { echo "[$((SECONDS - started)) s] $*" | tee -a "$OUT/summary.txt"; }

stage "device $DEVICE, size $SIZE, repeats $REPEATS, training cases $TRAIN_SIZE"
for mirror in $MIRRORS; do
    stage "nnunet_vs_tumorseg --$mirror"
    # shellcheck disable=SC2086  # SIZE and TRAIN_SIZE are lists of numbers
    "$PYTHON" benchmarks/nnunet_vs_tumorseg.py --work "$WORK" --device "$DEVICE" --size $SIZE \
        --train-size $TRAIN_SIZE --repeats "$REPEATS" "--$mirror" --skip-estimate \
        --out-json "$OUT/nnunet_${DEVICE//:/}_${mirror}.json" >> "$OUT/log.txt" 2>&1
    "$PYTHON" - "$OUT/nnunet_${DEVICE//:/}_${mirror}.json" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
report = json.load(open(sys.argv[1]))
s = report["summary"]
print(f"  {report['gpu'] or report['device']}: TumorSeg {s['tumorseg']['wall_s']:.1f} s, nnU-Net "
      f"{s['nnunet']['wall_s']:.1f} s ({s['speedup_wall']:.2f}x); Dice {s['dice']}")
PY
done
stage "done"
