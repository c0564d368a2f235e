#!/usr/bin/env bash
# The next default model (issue #3) in ONE device call: fine-tune the shipped default with
# hard negatives on 480 phantoms (configs/default_model_v5_gpu.json), then score it (and,
# with SCORE_INIT=1, the model it started from) on 40 tuning phantoms (choose there), the 20
# evaluation phantoms of the model README (report there), `tumorseg demo` seeds and
# lesion-free demo seeds. Sized for one H100/H200 with 16 cores, ~8 min; a lent session
# has 15 device minutes in all, so keep TRAIN_MIN so that everything fits in one call.
#
#   here: bash benchmarks/device_wheels.sh train (SimpleITK, MONAI and the real training sources);
#   on the device: its two calls in a row (SimpleITK alone is 53 of the 64 MiB a call carries), the
#   second ending in `PYTHONPATH=/tmp/site:$PWD [DATA=real REAL_CACHE=$PWD/.real_anatomy] bash configs/gpu_finetune_default.sh`.
#
#   DATA=synthetic (default): train on N phantoms (synthetic:N). DATA=real: on N_REAL real-anatomy
#   training cases (benchmarks/make_real_anatomy_set.py --split train, REAL_JOBS processes with
#   seeds 1, 2, ...: ICBM152 MRI and the head CT's right half, never the evaluation anatomy; their
#   sources from REAL_CACHE, no network needed) plus N phantoms (seeds 700000+), one --data folder
#   (sized so that the whole call stays near 8 min), CONFIG then defaulting to
#   configs/default_model_v7_realanatomy.json (issue #20 part 4). Score the result on the
#   real-anatomy evaluation set here afterwards (its anatomy is not carried).
#   knobs (env): CONFIG, INIT (default), N (480; with DATA=real 24), N_REAL (48), REAL_JOBS (8), DATA, REAL_CACHE,
#   EPOCHS (24), ITERS (100), BATCH (8),
#   PATCH ("96 96 96" to try more context; empty keeps the config's), TRAIN_MIN (5), SCORE_INIT (0),
#   WORKERS (14), DEVICE (cuda), TUNE_N (40), EVAL_N (20), DEMO_SEEDS, FREE_SEEDS, WORK, OUT.
#
# $OUT gets model/ (the package, best validation checkpoint), log.csv, one CSV per model
# and phantom set, demo lines and summary.txt. Ship here after reading them (README of the
# package, sha256 of its files), never straight from the device.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # the repository root (scripts and configs are named from there)

PYTHON=${PYTHON:-python3}
DATA=${DATA:-synthetic}
if [ "$DATA" = real ]; then
    CONFIG=${CONFIG:-configs/default_model_v7_realanatomy.json}
    N=${N:-24}
else
    CONFIG=${CONFIG:-configs/default_model_v5_gpu.json}
    N=${N:-480}
fi
N_REAL=${N_REAL:-48}
REAL_JOBS=${REAL_JOBS:-8}     # processes writing the real cases (seeds 1..REAL_JOBS)
REAL_CACHE=${REAL_CACHE:-}
INIT=${INIT:-default}
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-24}            # sized so the poly schedule ends inside TRAIN_MIN
ITERS=${ITERS:-100}
BATCH=${BATCH:-8}
PATCH=${PATCH:-}
WORKERS=${WORKERS:-14}
TRAIN_MIN=${TRAIN_MIN:-5}       # includes generating, caching and mining the phantoms
SCORE_INIT=${SCORE_INIT:-0}     # 1: score INIT too (its CPU numbers are in the model README)
TUNE_N=${TUNE_N:-40}
EVAL_N=${EVAL_N:-20}
PHANTOM_ARGS=${PHANTOM_ARGS:-}  # e.g. "--size 40 36 24 --spacing 2 2 3" (the test's small phantoms)
DEMO_SEEDS=${DEMO_SEEDS:-424242 1 2 3 4 5 6 7 8 9}
FREE_SEEDS=${FREE_SEEDS:-424242 11 12 13 14 15 16 17 18 19}
WORK=${WORK:-/tmp/gpu-finetune}
source benchmarks/device_common.sh
tumorseg() { "$PYTHON" -m tumorseg_core "$@"; }

make_phantom_sets

train_data="synthetic:$N"
if [ "$DATA" = real ]; then
    stage "training data: $N_REAL real-anatomy cases (train split) + $N phantoms"
    if [ -n "$REAL_CACHE" ]; then export TUMORSEG_REAL_ANATOMY_CACHE=$REAL_CACHE; fi
    per_job=$(( (N_REAL + REAL_JOBS - 1) / REAL_JOBS ))
    parts=()
    for ((j = 0; j < REAL_JOBS && j * per_job < N_REAL; j++)); do  # REAL_JOBS processes, one seed each
        n=$(( N_REAL - j * per_job < per_job ? N_REAL - j * per_job : per_job ))
        "$PYTHON" benchmarks/make_real_anatomy_set.py --split train -n "$n" --seed "$((1 + j))" -o "$WORK/real$j" \
            > "$WORK/real$j.log" &
        parts+=("real$j")
    done
    wait
    # shellcheck disable=SC2086  # PHANTOM_ARGS is a list of options
    "$PYTHON" benchmarks/make_eval_phantoms.py "$WORK/phantoms" --first-seed 700000 -n "$N" $PHANTOM_ARGS > "$WORK/phantoms.log"
    rm -rf "$WORK/data" && mkdir -p "$WORK/data/images" "$WORK/data/labels"
    for part in "${parts[@]}" phantoms; do
        for f in "$WORK/$part"/images/*; do ln -s "$f" "$WORK/data/images/${part}_$(basename "$f")"; done
        for f in "$WORK/$part"/labels/*; do ln -s "$f" "$WORK/data/labels/${part}_$(basename "$f")"; done
    done
    train_data="$WORK/data"
fi

stage "fine-tune $INIT with $CONFIG: $train_data, $EPOCHS x $ITERS x batch $BATCH, at most $TRAIN_MIN min"
patch=()
if [ -n "$PATCH" ]; then patch=(--patch-size $PATCH); fi
tumorseg train "$CONFIG" -o "$OUT/model" --data "$train_data" --init-weights "$INIT" --device "$DEVICE" \
    --num-workers "$WORKERS" --epochs "$EPOCHS" --iterations-per-epoch "$ITERS" --batch-size "$BATCH" "${patch[@]}" \
    --time-limit "$TRAIN_MIN" --workdir "$WORK/train.work" --overwrite 2> "$WORK/train.log"
cp "$WORK/train.work/log.csv" "$OUT/log.csv"
tail -n 3 "$WORK/train.log" | tee -a "$OUT/summary.txt"

# Median Dice is the issue's measure; `evaluate` prints means, so read its CSV.
score() {  # score NAME MODEL SET
    tumorseg evaluate --model "$2" --data "$WORK/$3" --device "$DEVICE" --csv "$OUT/$1_$3.csv" > /dev/null
    "$PYTHON" - "$OUT/$1_$3.csv" "$1 on $3" <<'EOF' | tee -a "$OUT/summary.txt"
import csv, math, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
dice = [float(r["dice"]) for r in rows if not math.isnan(float(r["dice"]))]
total = lambda key: sum(int(float(r[key])) for r in rows)
print(f"  {sys.argv[2]}: median Dice {statistics.median(dice):.3f}, mean {statistics.mean(dice):.3f}, "
      f"lesions {total('lesions_found')}/{total('lesions_truth')}, false-positive lesions {total('lesions_fp')}")
EOF
}
for set in tune eval; do
    stage "scores on $set"
    score new "$OUT/model" "$set"
    if [ "$SCORE_INIT" = 1 ]; then score init "$INIT" "$set"; fi
done
models=("$OUT/model")
if [ "$SCORE_INIT" = 1 ]; then models+=("$INIT"); fi

stage "demo seeds (Dice) and lesion-free demo seeds (false-positive lesions)"
# One process for every demo (a process per demo would spend most of the call importing torch).
"$PYTHON" - "$WORK/demo" "$DEVICE" "$DEMO_SEEDS" "$FREE_SEEDS" "${models[@]}" <<'EOF' | tee -a "$OUT/summary.txt"
import argparse, contextlib, io, os, sys
from tumorseg_core.commands.demo import add_arguments, run
folder, device, seeds, free_seeds, models = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split(), sys.argv[5:]
parser = argparse.ArgumentParser()
add_arguments(parser)  # every flag of `tumorseg demo` at its default, as on the command line

def last_field(model, seed, lesion_free, prefix):
    text = io.StringIO()
    argv = [folder, "--seed", str(seed), "--model", model, "--device", device, "--modality", "mri"]
    with contextlib.redirect_stdout(text):
        run(parser.parse_args(argv + (["--lesion-free"] if lesion_free else [])))
    return next(line.split()[-1] for line in text.getvalue().splitlines() if line.startswith(prefix))

for model in models:
    dice = [last_field(model, s, False, "Dice") for s in seeds]
    fp = [last_field(model, s, True, "Lesions") for s in free_seeds]
    print(f"  {os.path.basename(model.rstrip('/'))}: demo Dice {' '.join(dice)}; lesion-free false positives {' '.join(fp)}")
EOF
stage "done"
