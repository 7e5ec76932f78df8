#!/usr/bin/env python3
"""Pipeline-parallel benchmark: prefill and decode speed of `generate` over
pipeline depths, tensor-parallel meshes and micro-batch counts, beside the
planner's prediction and the measured pipeline bubble.

    python3 perf/pp_bench.py --model models-out/1b --suite prefill --reps 3
    python3 perf/pp_bench.py --model models-out/1b --suite decode --reps 3
    python3 perf/pp_bench.py --model models-out/small --suite grid --reps 3
    python3 perf/pp_bench.py --model models-out/1b --suite memory

Every rank runs one thread. Configurations run --reps times, interleaved so
that background load hits all alike; tables quote medians. Speed-ups divide
by the 1-rank run of the same suite. `predicted` is the planner's time for
the same mesh, layouts and micro-batches (generate --json "predicted", on
the cpu-local spec), so measured and predicted speed-ups compare directly.
Runs of more ranks than cores (4 on a 2-core machine) share cores: their
times measure the schedule, not the speed of 4 chips.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}


def run(binary, model, ranks, flags, batch, prompt_len, gen_len, weights):
    prompt = ",".join(str(1 + (i * 7919) % 31000) for i in range(prompt_len))
    cmd = [str(binary), "generate", "--model", str(model), "--prompt-ids", prompt, "--batch", str(batch),
           "--max-new-tokens", str(gen_len), "--threads", "1", "--weights", weights, "--json",
           *map(str, flags)]
    if ranks > 1:
        cmd = ["mpirun", "-n", str(ranks)] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **MPI_ENV))
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd[:14])} ...\n{p.stderr[-3000:]}")
    return json.loads(p.stdout)


def suite(name, batch):
    """(label, ranks, flags) per configuration."""
    if name == "prefill":
        # tp=2 on the same two ranks is the control: what two ranks give here.
        return [("pp=1", 1, [])] + [(f"pp=2 M={m}", 2, ["--pp", 2, "--micro-batches", m])
                                    for m in (1, 2, 4, 8)] + [("tp=2 (2,1,1) 2d", 2, ["--mesh", "2,1,1"])]
    if name == "decode":
        return [("pp=1", 1, []), ("pp=2 M=2", 2, ["--pp", 2, "--micro-batches", 2]),
                ("pp=2 M=1", 2, ["--pp", 2, "--micro-batches", 1]),
                ("tp=2 (2,1,1) 2d", 2, ["--mesh", "2,1,1"]), ("tp=2 (1,2,1) 2d", 2, ["--mesh", "1,2,1"])]
    if name == "grid":
        out = [("pp=1 tp=1", 1, [])]
        for pp, tp in ((2, 1), (1, 2), (4, 1), (2, 2), (1, 4)):
            mesh = f"{tp},1,1"
            for m in ((1, 2, 4) if pp > 1 else (1,)):
                out.append((f"pp={pp} tp={tp} M={m}", pp * tp,
                            ["--pp", pp, "--mesh", mesh] + (["--micro-batches", m] if pp > 1 else [])))
        return out
    if name == "memory":
        return [("pp=1", 1, []), ("pp=2", 2, ["--pp", 2]), ("pp=4", 4, ["--pp", 4])]
    raise SystemExit(f"unknown suite {name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--binary", default=str(REPO / "build" / "shardlm"))
    ap.add_argument("--suite", choices=["prefill", "decode", "grid", "memory"], required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=None, help="default: 1 for prefill, 16 otherwise")
    ap.add_argument("--weights", default="auto", help="--weights of generate (auto: the checkpoint's)")
    ap.add_argument("--out")
    args = ap.parse_args()
    gen_len = args.gen_len or (1 if args.suite in ("prefill", "memory") else 16)
    configs = suite(args.suite, args.batch)
    samples = {c[0]: [] for c in configs}
    for rep in range(args.reps if args.suite != "memory" else 1):
        for label, ranks, flags in configs:
            r = run(args.binary, args.model, ranks, flags, args.batch, args.prompt_len, gen_len, args.weights)
            samples[label].append(r)
            print(f"rep {rep} {label}: prefill {r['prefill_ms']:.0f} ms, decode {r['decode_ms']:.0f} ms",
                  file=sys.stderr)

    def med(label, f):
        return statistics.median(f(r) for r in samples[label])

    base = configs[0][0]
    lines = [f"# pipeline benchmark: {args.suite}", "",
             f"`python3 perf/pp_bench.py --model {args.model} --suite {args.suite} --reps {args.reps} "
             f"--weights {args.weights}` (batch {args.batch}, prompt {args.prompt_len}, {gen_len} new "
             f"tokens, one thread per rank, medians)", ""]
    if args.suite == "memory":
        lines += ["| config | peak RSS per rank (MiB) | largest vs 1 rank |", "|---|---|---:|"]
        one = max(samples[base][0]["peak_rss_mb_per_rank"])
        for label, _, _ in configs:
            rss = samples[label][0]["peak_rss_mb_per_rank"]
            lines.append(f"| {label} | {' '.join(f'{v:.0f}' for v in rss)} | {max(rss) / one:.1%} |")
    else:
        phase = "prefill" if args.suite == "prefill" else "decode"
        lines += [f"| config | {phase} ms | speed-up | predicted ms | predicted speed-up | "
                  f"bubble measured | bubble predicted | layers per stage |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        base_ms = med(base, lambda r: r[f"{phase}_ms"])
        base_pred = med(base, lambda r: r["predicted"][phase]["latency_s"] * 1e3)
        for label, _, _ in configs:
            ms = med(label, lambda r: r[f"{phase}_ms"])
            pred = med(label, lambda r: r["predicted"][phase]["latency_s"] * 1e3)
            pipe = samples[label][0]["pipeline"]
            bubble = med(label, lambda r: r["pipeline"]["measured"]["bubble"][phase])
            pbubble = pipe.get("predicted_bubble", {}).get(phase, 0.0)
            lines.append(f"| {label} | {ms:.0f} | {base_ms / ms:.2f}x | {pred:.0f} | {base_pred / pred:.2f}x | "
                         f"{bubble:.0%} | {pbubble:.0%} | {','.join(map(str, pipe['layers_per_stage']))} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
