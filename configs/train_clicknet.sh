#!/usr/bin/env bash
# The shipped click network (tumorseg_core/data/clicknet, issue #20 part 2), reproduced on a CPU:
# real-anatomy training cases (ICBM152 MRI and the head CT's right half, never the evaluation
# anatomy) and phantoms, a cube per click (three clicks per lesion, each with the model-free
# session's answer to it), then the resumable training loop and the export. Session 17: 2 cores,
# ~1.7 s a step, 1400 steps (~45 min) after ~10 min of data. Rerunning resumes from $WORK/run.
#
#   knobs (env): WORK (/tmp/clicknet), N_REAL (80), N_PHANTOMS (30), STEPS (1400), BATCH (4), DEST (tumorseg_core/data/clicknet)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-python}
WORK=${WORK:-/tmp/clicknet}
N_REAL=${N_REAL:-80}
N_PHANTOMS=${N_PHANTOMS:-30}
STEPS=${STEPS:-1400}
BATCH=${BATCH:-4}
DEST=${DEST:-tumorseg_core/data/clicknet}
mkdir -p "$WORK"
[ -f "$WORK/train/cases.json" ] || "$PY" benchmarks/make_real_anatomy_set.py --split train -n "$N_REAL" --seed 1 -o "$WORK/train"
[ -f "$WORK/val/cases.json" ] || "$PY" benchmarks/make_real_anatomy_set.py --split train -n 24 --seed 0 -o "$WORK/val"
[ -d "$WORK/phantoms/labels" ] || "$PY" benchmarks/make_eval_phantoms.py "$WORK/phantoms" -n "$N_PHANTOMS" --first-seed 700000
"$PY" - "$WORK" <<'PYEOF'
import sys
from pathlib import Path
from tumorseg_core.training.clicknet import samples
work = Path(sys.argv[1])
samples.build([work / "train"], work / "cubes", seed=1)
samples.build([work / "phantoms"], work / "cubes", seed=2)
samples.build([work / "val"], work / "val_cubes", seed=0)
PYEOF
"$PY" -m tumorseg_core.training.clicknet.train --cubes "$WORK/cubes" --val "$WORK/val_cubes" --workdir "$WORK/run" \
  --steps "$STEPS" --batch "$BATCH" --every 200
"$PY" -m tumorseg_core.training.clicknet.export "$WORK/run" "$DEST"
