#!/bin/bash
# bench_peers rows on a lent GPU machine (compression and fine-tuning on cuda, one process per
# (budget, method) lane, seeds 0,1,2 each), as run on an NVIDIA H200 on 2026-12-04.
#
# What the machine lacks travels in CARRY (an ignored folder of the checkout, named in the
# device tool's `carry`):
#   CARRY/fashion-mnist/     the four idx .gz files (here: /usr/share/datasets/fashion-mnist)
#   CARRY/site/              the peers' pure-Python packages + dist-info (torch_pruning,
#                            torch_kirigami, only_train_once, pydot, graphviz) from .venv
#   CARRY/cc/checkpoints/    optional: the cached baseline, so that every run uses ONE
#                            baseline (a GPU retrain is not bit-identical); the kiaee-cnn one
#                            of 2026-12-04 (91.91 %, sha 1caa76cbeb14bf8a) is committed in
#                            benchmarks/results/checkpoints/: copy it there to pool new rows
# The machine's python 3.12 has no `imp` module, which OTO 3.0.1 imports: a one-line shim is
# written to CARRY/site/imp.py. Its torch is 2.11 (ours is pinned 2.13 here; rows record it).
#
# Usage there:  CARRY=.devcarry BUDGET_S=520 bash benchmarks/device_peers.sh MODEL "B:METHOD[:SEEDS] ..."
# (one process per lane; SEEDS defaults to 0,1,2, e.g. 0.5:tp-taylor:2 runs seed 2 only)
# Lanes share the one GPU by time slicing: with 11 lanes (session of 2026-12-04, 535 s) no ssr
# or pgt row of kiaee-cnn finished (one seed per lane; ssr's budget search alone is ~45 AULM
# runs of 1,000 steps), and with 13 short peer lanes none finished in 195 s, although one such
# row took ~175 s beside 18 others before. Give the long methods the GPU with few other lanes.
# (DEVICE=cpu EXTRA=--quick runs the same steps anywhere, as a smoke test of this script)
# Back here:    python benchmarks/bench_peers.py --retime ROWS.jsonl MODELS_DIR
# (un-tar models.tar into MODELS_DIR; rows of the run are appended, re-timed on this CPU).
set -u
MODEL=${1:?model}; LANES=${2:?"lanes, e.g. '0.05:ssr 0.25:tp-taylor'"}
CARRY=${CARRY:-.devcarry}; OUT=${OUT:-/tmp/out}
T0=$(date +%s); END=$((T0 + ${BUDGET_S:-520}))
export PYTHONPATH=$PWD/src:$PWD/benchmarks:$PWD/$CARRY/site PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
export COMPACTNN_CACHE=${COMPACTNN_CACHE:-/tmp/cc}
mkdir -p "$COMPACTNN_CACHE" "$OUT" $CARRY/site
echo 'from importlib import reload  # noqa: F401  (py3.12 has no imp; OTO 3.0.1 imports it)' > $CARRY/site/imp.py
[ -d /usr/share/datasets/fashion-mnist ] || { mkdir -p /usr/share/datasets && cp -r $CARRY/fashion-mnist /usr/share/datasets/; }
[ -d $CARRY/cc ] && cp -r $CARRY/cc/* "$COMPACTNN_CACHE"/
R=${WORK:-/tmp}/r; M=${WORK:-/tmp}/models; L=${WORK:-/tmp}/logs; mkdir -p $R $M $L
DEVICE=${DEVICE:-cuda}; EXTRA=${EXTRA:-}; PY=${PY:-python3}
{ nvidia-smi -L 2>/dev/null; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"; } | tee $L/00_env.txt
$PY - "$MODEL" "$DEVICE" "$EXTRA" > $L/01_baseline.txt 2>&1 <<'PY'
import sys
import _lib, bench_peers as bp
base, src = bp.baseline(sys.argv[1], '--quick' in sys.argv[3], sys.argv[2])
print('baseline', src, _lib.state_sha(base), flush=True)
PY
rc=$?; tail -3 $L/01_baseline.txt
[ $rc != 0 ] && { cp $L/* "$OUT"/; exit 1; }
for lane in $LANES; do
  b=${lane%%:*}; m=${lane#*:}; s=0,1,2
  [ "${m#*:}" != "$m" ] && { s=${m#*:}; m=${m%%:*}; }
  timeout $((END - $(date +%s))) $PY benchmarks/bench_peers.py --models "$MODEL" --budgets $b \
    --seeds $s --methods $m --device $DEVICE --threads 1 --out $R --save-models $M $EXTRA \
    > $L/lane_${b}_${m}_${s//,/-}.txt 2>&1 &
done
wait
cp $R/peers_rows*.jsonl "$OUT"/ 2>/dev/null
tar -C $M -cf "$OUT"/models.tar .
for f in $L/*; do echo "=== $f"; tail -c 6000 $f; done > "$OUT"/logs.txt
grep -h '"status"' $L/lane_* | cut -c1-200
echo "done at $(( $(date +%s) - T0 )) s"
