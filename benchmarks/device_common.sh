# Sourced by the one-call device scripts (benchmarks/gpu_coarse_cascade.sh,
# configs/gpu_finetune_default.sh), run from the repository root: the work and output
# folders, a timed stage log ($OUT/summary.txt), and the phantom sets every comparison of
# models uses (tuning: seeds 600000+, choose there; evaluation: 500000+, report there).
# Set WORK, PYTHON, TUNE_N, EVAL_N and PHANTOM_ARGS first.
OUT=${OUT:-$WORK/out}
mkdir -p "$WORK" "$OUT"
export PYTHONUNBUFFERED=1 TUMORSEG_CACHE="$WORK/cache"
started=$SECONDS
stage() { echo "[$((SECONDS - started)) s] $*" | tee -a "$OUT/summary.txt"; }

make_phantom_sets() {
    stage "evaluation phantoms (tune: seeds 600000+, eval: 500000+)"
    # shellcheck disable=SC2086  # PHANTOM_ARGS is a list of options
    "$PYTHON" benchmarks/make_eval_phantoms.py "$WORK/tune" --first-seed 600000 -n "$TUNE_N" $PHANTOM_ARGS > "$WORK/tune.log"
    # shellcheck disable=SC2086
    "$PYTHON" benchmarks/make_eval_phantoms.py "$WORK/eval" -n "$EVAL_N" $PHANTOM_ARGS > "$WORK/eval.log"
}
