#!/usr/bin/env python3
"""Tensor parallelism across nodes against pipeline stages across nodes, on the
namespace cluster (scripts/cluster.sh, needs root): the planner's prediction on
a spec calibrated on that cluster beside the measured `generate` times, and
whether the planner's pick (the setup it predicts faster) is the one measured
faster.

    python3 perf/multinode_bench.py [--model models-out/small] [--nodes 2] [--ranks-per-node 2] \
        [--rate 1gbit] [--batch 4] [--prompt-len 64] [--gen-len 32] [--reps 3] \
        [--hardware SPEC | --spec-out FILE] [--out perf/results/multinode-ns.md] [--max-error 0.3]

Setups (ranks fill a node before the next, as mpirun --map-by slot does):
  tp  --mesh R,N,1: x inside a node, y across the nodes (every layer's
      collectives over y cross them);
  pp  --pp N --mesh R,1,1: one pipeline stage per node, tensor parallelism
      inside it (one activation per micro-batch crosses per stage boundary).
Without --hardware the cluster is calibrated first (`calibrate` under
the cluster's mpirun). Runs are interleaved, medians of --reps; exit 1 when a
phase is off by more than --max-error or the pick is not the faster one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "scripts" / "cluster.sh"


def prompt_ids(length):
    return ",".join(str(1 + (i * 7919) % 31000) for i in range(length))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models-out" / "small"))
    ap.add_argument("--binary", default=str(REPO / "build" / "shardlm"))
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--ranks-per-node", type=int, default=2)
    ap.add_argument("--rate", default="1gbit")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ffn", default="1d", help="feedforward layout of both phases and setups")
    ap.add_argument("--attn", default="heads", help="attention layout of both phases and setups")
    ap.add_argument("--hardware", help="a spec calibrated on this cluster (default: calibrate now)")
    ap.add_argument("--spec-out", help="keep the spec calibrated on the cluster here")
    ap.add_argument("--out")
    ap.add_argument("--max-error", type=float, default=0.3)
    args = ap.parse_args()

    why = subprocess.run(["bash", str(CLUSTER), "check"], capture_output=True, text=True)
    if why.returncode != 0:
        sys.exit(f"no namespace cluster here: {(why.stdout + why.stderr).strip()}")
    ranks = args.nodes * args.ranks_per_node
    root = Path(tempfile.mkdtemp(prefix="shardlm-mn-bench-"))
    cdir = root / "cluster"
    up = subprocess.run(["bash", str(CLUSTER), "up", str(args.nodes), "--ranks-per-node",
                         str(args.ranks_per_node), "--rate", args.rate, "--dir", str(cdir)],
                        capture_output=True, text=True)
    if up.returncode != 0:
        sys.exit(f"cluster.sh up failed:\n{up.stdout}{up.stderr}")
    try:
        def mpirun(*cmd):
            p = subprocess.run([str(cdir / "mpirun"), "-n", str(ranks), args.binary, *cmd],
                               capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"failed: shardlm {' '.join(cmd[:6])} ...\n{p.stderr}")
            return p.stdout

        spec = args.hardware
        if not spec:
            spec = str(root / "ns-cluster.yaml")
            mpirun("calibrate", "--out", spec, "--name", "ns-cluster")
        r, n = args.ranks_per_node, args.nodes
        setups = {"tp": ["--mesh", f"{r},{n},1"], "pp": ["--pp", str(n), "--mesh", f"{r},1,1"]}
        common = ["generate", "--model", args.model, "--prompt-ids", prompt_ids(args.prompt_len),
                  "--batch", str(args.batch), "--max-new-tokens", str(args.gen_len), "--warmup", "1",
                  "--hardware", spec, "--json",
                  *[flag for phase in ("prefill", "decode")
                    for flag in (f"--ffn-layout-{phase}", args.ffn, f"--attn-layout-{phase}", args.attn)]]
        runs = {k: [] for k in setups}
        for _ in range(args.reps):
            for name, flags in setups.items():
                out = json.loads(mpirun(*common, *flags).strip().splitlines()[-1])
                runs[name].append(out)
        if args.spec_out and not args.hardware:
            shutil.copyfile(spec, args.spec_out)
    finally:
        subprocess.run(["bash", str(CLUSTER), "down", "--dir", str(cdir)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

    lines = [
        f"# Across nodes: tensor parallelism vs pipeline stages ({args.nodes} nodes x "
        f"{args.ranks_per_node} ranks, {args.rate})",
        "",
        f"`{Path(args.model).name}`, batch {args.batch}, prompt {args.prompt_len}, {args.gen_len} new tokens; "
        f"median of {args.reps} interleaved runs (one warm-up run each); spec "
        f"{'calibrated on the cluster just before' if not args.hardware else args.hardware}. "
        f"Layouts pinned ({args.ffn}/{args.attn}). Error = predicted / measured - 1.",
        "",
        "| setup | mesh | layouts (prefill; decode) | prefill meas. ms | pred. ms | error | decode meas. ms | "
        "pred. ms | error | total meas. ms | total pred. ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    worst, totals = 0.0, {}
    for name, rs in runs.items():
        meas_p = statistics.median(x["prefill_ms"] for x in rs)
        meas_d = statistics.median(x["decode_ms"] for x in rs)
        pred = rs[0]["predicted"]
        pred_p, pred_d = pred["prefill"]["latency_s"] * 1e3, pred["decode"]["latency_s"] * 1e3
        ep, ed = pred_p / meas_p - 1, pred_d / meas_d - 1
        worst = max(worst, abs(ep), abs(ed))
        totals[name] = (meas_p + meas_d, pred_p + pred_d)
        m, lay = rs[0]["mesh"], rs[0]["layouts"]
        lines.append(
            f"| {name} | pp {rs[0]['pp']}, {m['x']},{m['y']},{m['z']} | {lay['prefill']['ffn']}/{lay['prefill']['attn']}; "
            f"{lay['decode']['ffn']}/{lay['decode']['attn']} | {meas_p:.1f} | {pred_p:.1f} | {ep:+.0%} | "
            f"{meas_d:.1f} | {pred_d:.1f} | {ed:+.0%} | {meas_p + meas_d:.1f} | {pred_p + pred_d:.1f} |")
    pick = min(totals, key=lambda k: totals[k][1])
    faster = min(totals, key=lambda k: totals[k][0])
    ok = worst <= args.max_error and pick == faster
    lines += ["", f"Planner's pick: **{pick}**; measured faster: **{faster}**; largest error {worst:.0%} "
                  f"(target {args.max_error:.0%}): {'holds' if ok else 'does not hold'}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
