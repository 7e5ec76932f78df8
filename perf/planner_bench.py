#!/usr/bin/env python3
"""The planner against this machine: `generate`'s predicted prefill and decode
times on a calibrated hardware spec beside the measured ones, on 1 and N ranks
(one thread each), every layout, a grid of batch sizes and prompt lengths.

    python3 perf/planner_bench.py measure --model models-out/small --hardware cpu-local.yaml \
        --jsonl perf/results/planner-cpu.jsonl [--ranks 1,2] [--shapes 1x16,1x512,4x128,16x16,16x512] \
        [--gen-len 16] [--reps 3]
    python3 perf/planner_bench.py report --hardware cpu-local.yaml \
        --jsonl perf/results/planner-cpu.jsonl [--out perf/results/planner-cpu.md] [--max-error 0.2]

`measure` appends one JSON line per run: the configuration, the measured
prefill and decode times (one warm-up run of the same request first) and the
prediction `generate` printed beside them. Runs are interleaved (every
configuration once, then again) so that background load hits all alike.
`report` takes the median of the repeats of each configuration and prices it
again with `shardlm plan` on the given spec — the same estimate `generate`
makes, so a cost-model change is checked against the stored measurements
without running them again — and prints the error table (+: predicted slower
than measured). With --max-error it exits 1 when any error is larger.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FFN = ["1d", "2d", "wg-x", "wg-xy", "wg-xyz"]
ATTN = ["heads", "batch"]
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}


def prompt_ids(length):
    return ",".join(str(1 + (i * 7919) % 31000) for i in range(length))


def mesh_for(ranks):
    return f"{ranks},1,1"


def configurations(ranks_list, shapes, ffn_layouts):
    """(ranks, ffn, attn, batch, prompt) in run order; one rank runs one layout."""
    out = []
    for batch, prompt in shapes:
        for ranks in ranks_list:
            layouts = [("2d", "heads")] if ranks == 1 else [(f, a) for f in ffn_layouts for a in ATTN]
            out += [(ranks, f, a, batch, prompt) for f, a in layouts]
    return out


def layout_flags(ffn, attn):
    return ["--ffn-layout-prefill", ffn, "--ffn-layout-decode", ffn,
            "--attn-layout-prefill", attn, "--attn-layout-decode", attn]


def measure_one(args, config):
    ranks, ffn, attn, batch, prompt = config
    cmd = [args.binary, "generate", "--model", args.model, "--prompt-ids", prompt_ids(prompt),
           "--batch", str(batch), "--max-new-tokens", str(args.gen_len), "--threads", "1",
           "--warmup", "1", "--hardware", args.hardware, "--mesh", mesh_for(ranks), "--json",
           *layout_flags(ffn, attn)]
    if ranks > 1:
        cmd = ["mpirun", "-n", str(ranks), "--bind-to", "core"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **MPI_ENV))
    row = {"ranks": ranks, "mesh": mesh_for(ranks), "ffn": ffn, "attn": attn, "batch": batch,
           "prompt": prompt, "gen_len": args.gen_len, "time": time.strftime("%H:%M:%S"),
           "load": os.getloadavg()[0]}
    if p.returncode != 0:
        row["error"] = (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]
        return row
    out = json.loads(p.stdout.strip().splitlines()[-1])
    row.update(prefill_ms=out["prefill_ms"], decode_ms=out["decode_ms"], step_ms=out["step_ms"],
               predicted_prefill_ms=out["predicted"]["prefill"]["latency_s"] * 1e3,
               predicted_decode_ms=out["predicted"]["decode"]["latency_s"] * 1e3)
    return row


def measure(args):
    configs = configurations(args.ranks, args.shapes, args.ffn_layouts)
    with open(args.jsonl, "a") as f:
        for rep in range(args.reps):
            for c in configs:
                row = measure_one(args, c)
                row["rep"] = rep
                f.write(json.dumps(row) + "\n")
                f.flush()
                what = row.get("error") or f"prefill {row['prefill_ms']:.1f} ms, decode {row['decode_ms']:.1f} ms"
                print(f"rep {rep} {c}: {what}", file=sys.stderr)


def predict(args, key):
    """Prefill and decode ms that `generate` predicts for a stored configuration."""
    ranks, mesh, ffn, attn, batch, prompt, gen = key
    # generate's decode runs max_new_tokens - 1 steps: the first token comes from prefill.
    cmd = [args.binary, "plan", "--model", args.model_config, "--hardware", args.hardware,
           "--chips", str(ranks), "--mesh", mesh, "--batch", str(batch), "--prompt-len",
           str(prompt), "--gen-len", str(gen - 1), "--weights", args.weights, "--json",
           *layout_flags(ffn, attn)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    plan = json.loads(p.stdout)
    return plan["prefill"]["latency_s"] * 1e3, plan["decode"]["latency_s"] * 1e3


def report(args):
    rows = [json.loads(line) for line in open(args.jsonl) if line.strip()]
    groups = {}
    for r in rows:
        if "error" in r:
            continue
        key = (r["ranks"], r["mesh"], r["ffn"], r["attn"], r["batch"], r["prompt"], r["gen_len"])
        groups.setdefault(key, []).append(r)
    failed = sorted({(r["ranks"], r["ffn"], r["attn"], r["batch"], r["prompt"], r["error"])
                     for r in rows if "error" in r})
    lines = [
        f"# Planner vs measured: `generate` on {args.model_config}, spec {args.hardware}",
        "",
        f"Measured: {len(rows)} runs, median of the repeats of each configuration (interleaved; one "
        "warm-up run of the same request before each timed one); one thread per rank. Predicted: "
        "`shardlm plan` on the spec with the mesh, layouts and workload pinned (what `generate` "
        "prints). Error = predicted / measured - 1. Load average (1 min) during the runs: median "
        f"{statistics.median(r['load'] for r in rows):.1f}, range {min(r['load'] for r in rows):.1f}"
        f"-{max(r['load'] for r in rows):.1f} on {os.cpu_count()} cores.",
        "",
        "| ranks | mesh | ffn | attn | batch | prompt | prefill meas. ms | pred. ms | error | "
        "decode meas. ms | pred. ms | error | runs |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    errors = []
    for key in sorted(groups, key=lambda k: (k[0], k[4], k[5], FFN.index(k[2]), k[3])):
        g = groups[key]
        meas_p = statistics.median(r["prefill_ms"] for r in g)
        meas_d = statistics.median(r["decode_ms"] for r in g)
        pred_p, pred_d = predict(args, key)
        ep, ed = pred_p / meas_p - 1, pred_d / meas_d - 1
        errors.append((abs(ep), "prefill", key, ep))
        errors.append((abs(ed), "decode", key, ed))
        ranks, mesh, ffn, attn, batch, prompt, _ = key
        lines.append(f"| {ranks} | {mesh} | {ffn} | {attn} | {batch} | {prompt} | {meas_p:.1f} | "
                     f"{pred_p:.1f} | {ep:+.0%} | {meas_d:.1f} | {pred_d:.1f} | {ed:+.0%} | {len(g)} |")
    within = sum(e[0] <= args.max_error for e in errors)
    worst = max(errors) if errors else None
    lines += ["",
              f"{within} of {len(errors)} phase times within {args.max_error:.0%}; RMS error "
              f"{(sum(e[3] ** 2 for e in errors) / max(1, len(errors))) ** 0.5:.1%}"
              + (f"; largest {worst[3]:+.0%} ({worst[1]}, {worst[2][0]} ranks, {worst[2][2]}/{worst[2][3]}, "
                 f"batch {worst[2][4]}, prompt {worst[2][5]})." if worst else ".")]
    if failed:
        lines += ["", "Not run (the configuration was refused):", ""]
        lines += [f"- {r} ranks, {f}/{a}, batch {b}, prompt {p}: {e}" for r, f, a, b, p, e in failed]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if within == len(errors) else 1


def shape(text):
    b, p = text.lower().split("x")
    return int(b), int(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["measure", "report"])
    ap.add_argument("--model", default=str(REPO / "models-out" / "small"))
    ap.add_argument("--hardware", required=True, help="the calibrated spec (shardlm calibrate --out)")
    ap.add_argument("--binary", default=str(REPO / "build" / "shardlm"))
    ap.add_argument("--jsonl", required=True)
    ap.add_argument("--ranks", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    ap.add_argument("--shapes", type=lambda s: [shape(x) for x in s.split(",")],
                    default=[(1, 16), (1, 512), (4, 128), (16, 16), (16, 512)],
                    help="BATCHxPROMPT,... (default 1x16,1x512,4x128,16x16,16x512)")
    ap.add_argument("--ffn-layouts", type=lambda s: s.split(","), default=FFN,
                    help="feedforward layouts of the multi-rank runs (default all; on an N,1,1 mesh "
                         "wg-xy and wg-xyz run the same steps as wg-x)")
    ap.add_argument("--gen-len", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--weights", default="bf16", help="the checkpoint's weight dtype, for report")
    ap.add_argument("--out")
    ap.add_argument("--max-error", type=float, default=0.2)
    args = ap.parse_args()
    args.model_config = args.model
    if args.mode == "measure":
        measure(args)
        return 0
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
