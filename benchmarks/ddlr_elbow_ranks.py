"""Issue 15: which rank rule reproduces the DDLR paper's Fig. 2 (size ratio ~0.4-1.0)?
Spiral-mlp fc2 (80x80), N = 256 / 512, eps of sec. 4.1; one DDLR solve per point, then the
deployed weight at r-1, r (our elbow), r+1 and the numerical rank (sigma_i > 1e-4 sigma_1).

    .venv/bin/python benchmarks/ddlr_elbow_ranks.py   # ~6 min on 2 shared cores

Writes benchmarks/results/ddlr_elbow_ranks.json (one row per N and eps).
"""

import copy
import json
import sys

sys.path.insert(0, "benchmarks")
import torch
from torch.utils.data import DataLoader

import bench_ddlr_repro as B
from compactnn.capture import collect
from compactnn.solvers.layerwise import ADMMOptions, choose_rank, factorize, solve_ddlr

torch.set_num_threads(1)
name, exp = "fig2_spiral", B.OURS["fig2_spiral"]
train_ds, test_ds = B._datasets(exp)
model, how = B._reference(name, exp, train_ds)
test = DataLoader(test_ds, batch_size=1000)
base = B._acc(model, test)
print("baseline", base, how, flush=True)
d = n = 80
rows = []
for N in exp["N"]:
    g = torch.Generator().manual_seed(N)
    idx = torch.randperm(len(train_ds), generator=g)[:N]
    xb = train_ds.tensors[0][idx]
    io = collect(model, ["fc2"], [xb], max_rows=None)["fc2"]
    for frac in exp["eps"]:
        res = solve_ddlr(
            io.X, io.Y, model.fc2.bias.detach(), eps_frac=frac, options=ADMMOptions(max_iter=20000)
        )
        s = torch.linalg.svdvals(res.U)
        r = choose_rank(res.U)
        num = int((s > 1e-4 * s[0]).sum())
        out = {"N": N, "eps": frac, "status": res.status, "elbow": r, "numerical_rank": num}
        for label, k in (("r-1", r - 1), ("r", r), ("r+1", r + 1), ("numerical", num)):
            if k < 1 or k > min(d, n):
                continue
            first, second = factorize(res.U, k)
            m = copy.deepcopy(model)
            with torch.no_grad():
                m.fc2.weight.copy_((second @ first).to(m.fc2.weight.dtype))
            out[label] = {
                "rank": k,
                "size_ratio": min(k * (d + n), d * n) / (d * n),
                "rel_acc": B._acc(m, test) / base,
            }
        rows.append(out)
        print(json.dumps(out), flush=True)
json.dump(
    {"baseline": base, "rows": rows}, open(B.RESULTS / "ddlr_elbow_ranks.json", "w"), indent=1
)
