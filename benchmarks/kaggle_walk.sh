#!/usr/bin/env bash
# The README's Kaggle steps in a Kaggle-like layout, with only the wheels `kaggle-code` collects
# (docs/kaggle.md, "A Kaggle-like walk"):
#   1. `kaggle-code` on "your machine" (the developer's venv) writes kaggle/input/shopee-pipeline-code;
#   2. a venv stands in for Kaggle's image: torch, torchvision and the rest of KAGGLE_IMAGE at the
#      developer venv's versions (lightgbm at another version, as the image's own), plus the notebook
#      runners; none of the wheels kaggle-code collects;
#   3. the training notebook runs in kaggle/working with DATA_DIR and CODE_DIR as docs/kaggle.md says,
#      CONFIG = None (no GPU: the demo preset), every non-local connection refused; its last cell packages;
#   4. its output becomes kaggle/input/my-run-output; the venv goes back to the image (a new session),
#      and the inference notebook runs in a fresh kaggle/working, offline, from that package.
# Each step's wall time and the load average are printed. Usage, from the checkout:
#   DEV_PY=/path/to/venv/bin/python benchmarks/kaggle_walk.sh [WALK_DIR]   (default /tmp/kwalk)
# The venv (WALK_DIR/kenv, or KENV) is kept and reused; the rest of WALK_DIR/kaggle is written anew.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WALK=$(mkdir -p "${1:-/tmp/kwalk}" && cd "${1:-/tmp/kwalk}" && pwd)
DEV_PY=${DEV_PY:-python}
KENV=${KENV:-$WALK/kenv}
IMAGE_LIGHTGBM=${IMAGE_LIGHTGBM:-4.6.0}  # the image's lightgbm; the code dataset brings the trained one
SYNTH_GROUPS=${SYNTH_GROUPS:-160}       # the training notebook's own default size
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
K=$WALK/kaggle
NB="$KENV/bin/python $REPO/benchmarks/kaggle_walk_nb.py"

step() { echo "== $(date +%T) $1 | load average $(cut -d' ' -f1-3 /proc/loadavg)"; }
timed() {  # timed LABEL CMD...: run CMD, then print its wall time
  local label=$1 t0 t1
  shift
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  echo "-- $label: $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") s wall | load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

rm -rf "$K" "$WALK/tmp" "$WALK/working-training"
mkdir -p "$K/input" "$K/working" "$WALK/tmp"

step "1. the code dataset (kaggle-code, in the developer's venv)"
cd "$REPO"
timed kaggle-code "$DEV_PY" -m pipeline kaggle-code --out "$K/input/shopee-pipeline-code"

step "2. the Kaggle-like venv $KENV"
if [ ! -x "$KENV/bin/python" ]; then
  # KAGGLE_IMAGE's distributions at the versions installed in the developer's venv (those not installed
  # there, xgboost say, are left out: nothing imports them), lightgbm at the image's own version.
  pins=$(cd "$REPO" && "$DEV_PY" -c "
from pipeline.runs.libraries import KAGGLE_IMAGE, version
print(' '.join(f'{d}=={version(d)}' for d in sorted(KAGGLE_IMAGE - {'lightgbm'}) if version(d) != 'unknown'))")
  runners=$("$DEV_PY" -c "
from importlib.metadata import version
print(' '.join(f'{d}=={version(d)}' for d in ('ipykernel', 'ipython', 'jupyter_client', 'jupyter_core', 'nbclient', 'nbformat')))")
  "${PY311:-python3.11}" -m venv "$KENV"
  timed kenv-torch "$KENV/bin/pip" install -q $(echo "$pins" | tr ' ' '\n' | grep -E '^torch(vision)?==')
  timed kenv-image "$KENV/bin/pip" install -q $pins "lightgbm==$IMAGE_LIGHTGBM" $runners
  "$KENV/bin/pip" freeze --all > "$KENV/image-freeze.txt"
fi
$NB image-state "$KENV/image-freeze.txt"
echo "collected wheels' distributions that the image holds (a dependency of an image package, or the image's lightgbm):"
"$KENV/bin/python" - "$K/input/shopee-pipeline-code/kaggle-code.json" "$KENV/image-freeze.txt" <<'EOF'
import json, re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
image = {norm(l.split("==")[0]): l.strip().split("==")[1] for l in open(sys.argv[2]) if "==" in l}
for w in json.load(open(sys.argv[1]))["wheels"]:
    if norm(w["dist"]) in image:
        print(f"  {w['dist']}: collected {w['version']}, image {image[norm(w['dist'])]}")
EOF

step "3a. competition data (synthetic, Kaggle's layout; the truth kept outside input/)"
cd "$REPO"
quiet() { "$@" > "$WALK/quiet.log" 2>&1 || { cat "$WALK/quiet.log"; return 1; }; }
timed synth quiet "$DEV_PY" -m pipeline synth --out "$K/input/shopee-product-matching" --groups "$SYNTH_GROUPS" --seed 0
tail -1 "$WALK/quiet.log"
mv "$K/input/shopee-product-matching/test_truth.csv" "$WALK/test_truth.csv"

# Every connection that is not to this machine is refused, in the kernels and in what they start
# (pip), and written to $NET_LOG with the process that tried it.
mkdir -p "$WALK/guard"
export NET_LOG=$WALK/network-attempts.log
: > "$NET_LOG"
cat > "$WALK/guard/sitecustomize.py" <<'EOF'
import os
import socket
import sys

_connect = socket.socket.connect


def _guarded(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
        with open(os.environ["NET_LOG"], "a") as f:
            print(f"{address} refused, in {' '.join(sys.argv)[:200]}", file=f)
        raise ConnectionRefusedError(f"network access attempted: {address}")
    return _connect(self, address)


socket.socket.connect = _guarded
EOF

step "3b. training notebook (Run All), CONFIG = None, network refused"
cd "$K/working"
PYTHONPATH="$WALK/guard" timed training $NB run "$REPO/notebooks/training.ipynb" '{"DATA_DIR": "../input/shopee-product-matching", "RUN_DIR": null, "SYNTH_GROUPS": 160, "CONFIG": null, "OVERRIDES": [], "CODE_DIR": "../input/shopee-pipeline-code", "PACKAGE_DIR": null}' "$K/working" "$WALK/training.out.ipynb"
echo "installed by the notebook, beyond the image:"
$NB diff "$KENV/image-freeze.txt" "$K/input/shopee-pipeline-code/kaggle-code.json"
echo "connections refused during the training notebook: $(wc -l < "$NET_LOG")"; cat "$NET_LOG"; : > "$NET_LOG"
ls "$K/working" "$K/working/package" "$K/working/package/wheels"

step "4. a dataset from the training output; a new session (the image, a fresh working folder), offline"
cp -r "$K/working" "$K/input/my-run-output"
mv "$K/working" "$WALK/working-training" && mkdir "$K/working"
$NB image-state "$KENV/image-freeze.txt"
cd "$K/working"
PYTHONPATH="$WALK/guard" TMPDIR="$WALK/tmp" HF_HUB_OFFLINE=1 timed inference $NB run "$REPO/notebooks/inference.ipynb" '{"PACKAGE_DIR": "../input/my-run-output/package", "DATA_DIR": "../input/shopee-product-matching", "OUT_CSV": "submission.csv"}' "$K/working" "$WALK/inference.out.ipynb"

step "checks"
echo "connections refused during the inference notebook: $(wc -l < "$NET_LOG")"; cat "$NET_LOG"
grep '^libraries:' "$WALK/inference.out.ipynb.txt" || true
grep 'loaded from' "$WALK/inference.out.ipynb.txt" || true
echo "working folder after the inference: $(ls -A "$K/working" | tr '\n' ' ')"
echo "pipeline_site_* left in TMPDIR: $(find "$WALK/tmp" -maxdepth 1 -name 'pipeline_site_*' | wc -l)"
echo "the venv after the inference, beyond the image:"
$NB diff "$KENV/image-freeze.txt"
cd "$REPO"
"$DEV_PY" -c "
import sys, pandas as pd
from pipeline.submission import validate_submission
sub = pd.read_csv(sys.argv[1])
validate_submission(sub, pd.read_csv(sys.argv[2])['posting_id'])
print(f'submission.csv valid: {len(sub)} rows')" "$K/working/submission.csv" "$K/input/shopee-product-matching/test.csv"
"$DEV_PY" -c "
import sys, pandas as pd
sets = lambda p: {r.posting_id: set(r.matches.split()) for r in pd.read_csv(p).itertuples()}
print('the same matches as the training run\'s own submission:', sets(sys.argv[1]) == sets(sys.argv[2]))" \
  "$K/working/submission.csv" "$WALK/working-training/runs/notebook/submission.csv"
"$DEV_PY" -m pipeline score --submission "$K/working/submission.csv" --truth "$WALK/test_truth.csv"
step "done"
