#!/usr/bin/env bash
# Docs figures (PNG + the CSV/JSON behind them) for MNIST / Fashion-MNIST run directories.
#
#   SOFTHEBB_DATA=../shared/datasets scripts/analyze_mnist.sh RUN_DIR [RUN_DIR ...]
#
# e.g. runs/mnist-SoftHebbCnnMNIST-s0 runs/fashion-mnist-SoftHebbCnnMNIST-s0 (from `softhebb train`), plus any
# Hard-WTA or backprop runs to compare. Writes into $OUT (default runs/analysis):
#   filters.png/csv                  first-layer filters of every run side by side
#   robustness.png/csv/json          noise, FGSM/FGM and PGD accuracy, each run on its own test set
#   <run folder>/                    receptive fields, learning dynamics (+ lr schedules), representations
# Sizes (env): DYN_LIMIT train images re-trained for the dynamics (20000), REP_LIMIT test images
# for embeddings/sparsity/top patches (2000), ROB_LIMIT test images attacked (1000), PGD_STEPS (10),
# NEURONS per block for activation maximisation (36), AM_STEPS (300), DEVICE (auto: cuda if present).
# On 2 CPU cores the 3-layer MNIST net takes roughly: dynamics 10 min, representations 2 min,
# robustness 30 min per run at the defaults — use DEVICE=cuda or smaller limits for a quick look.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  sed -n 2,15p "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-runs/analysis}
if [ -z "${DEVICE:-}" ]; then
  DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
fi
common=(--device "$DEVICE" --seed 0)  # data root: $SOFTHEBB_DATA, as for `softhebb train`
analyze() { "$PY" -m softhebb.cli analyze "$@" "${common[@]}"; }

for run in "$@"; do
  [ -f "$run/model.safetensors" ] || { echo "not a finished run directory: $run" >&2; exit 2; }
done

analyze filters "$@" --out "$OUT"
for run in "$@"; do
  dir="$OUT/$(basename "$run")"
  analyze receptive-fields "$run" --out "$dir" --neurons "${NEURONS:-36}" --am-steps "${AM_STEPS:-300}"
  analyze dynamics "$run" --out "$dir" --limit "${DYN_LIMIT:-20000}"
  analyze representations "$run" --out "$dir" --limit "${REP_LIMIT:-2000}"
done
analyze robustness "$@" --out "$OUT" --limit "${ROB_LIMIT:-1000}" --pgd-steps "${PGD_STEPS:-10}"
echo "figures in $OUT"
