#!/usr/bin/env bash
# Short end-to-end run of the main job (issue 14): train a small model, compress it with the CLI,
# then load and run every artifact in fresh processes -- ONNX (onnxruntime) and TorchScript
# without compactnn, the compact checkpoint with compactnn.load. A few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
D=$(mktemp -d "${TMPDIR:-/tmp}/compactnn-e2e.XXXXXX")
trap 'rm -rf "$D"' EXIT
$PY -m compactnn.cli train spiral-mlp --dataset spiral --epochs 5 --out "$D/base.safetensors" --quiet
# ddlr (low-rank) and net-trim (sparse, gather form): compressed, shipped, then run fresh
for M in ddlr net-trim; do
R="$D/res-$M"
FORM=dense; [ "$M" = net-trim ] && FORM=gather
$PY -m compactnn.cli compress "$D/base.safetensors" --method $M --data spiral --on-drop warn \
  --data-opt batch_size=64 --seed 1 --sparse-form $FORM --out "$R" > "$D/log" 2>&1 \
  || { cat "$D/log"; exit 1; }
tail -n 4 "$D/log"
for f in model.onnx model.pt model.safetensors plan.json report.json report.md; do
  test -s "$R/$f" || { echo "e2e: $M: missing $f"; exit 1; }
done
# 1) the checkpoint restores with compactnn.load onto a fresh instance; reference outputs
$PY - "$R" <<'PY'
import sys
import numpy as np
import torch
import compactnn
from compactnn.models import create
d = sys.argv[1]
model = compactnn.load(d, model=create("spiral-mlp"))
x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    np.savez(d + "/ref.npz", x=x.numpy(), y=model(x).numpy())
print("e2e: compact checkpoint restored with compactnn.load")
PY
# 2) ONNX and TorchScript in a fresh process where compactnn cannot be imported
$PY - "$R" <<'PY'
import sys
sys.modules["compactnn"] = None
import numpy as np
import onnx
import onnxruntime as ort
import torch
d = sys.argv[1]
ref = np.load(d + "/ref.npz")
onnx.checker.check_model(onnx.load(d + "/model.onnx"))
sess = ort.InferenceSession(d + "/model.onnx", providers=["CPUExecutionProvider"])
a = sess.run(None, {"input": ref["x"]})[0]
b = torch.jit.load(d + "/model.pt")(torch.from_numpy(ref["x"])).detach().numpy()
da, db = np.abs(a - ref["y"]).max(), np.abs(b - ref["y"]).max()
print(f"e2e: onnxruntime max |delta| {da:.2e}, TorchScript max |delta| {db:.2e}")
assert da <= 1e-4 and db <= 1e-4
PY
done
ln -s "$D/res-ddlr" "$D/res"
$PY -m compactnn.cli export "$D/res" --format onnx
$PY -m compactnn.cli report "$D/res"
echo "e2e: ok"
