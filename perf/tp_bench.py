#!/usr/bin/env python3
"""Tensor-parallel benchmark: prefill and decode tokens/s of a model on 1 rank
and on N ranks (one thread each) in every layout, and the N-rank/1-rank ratio.

    python3 perf/tp_bench.py --model models-out/small --ranks 2 --reps 3 \
        [--prompt-len 128] [--gen-len 32] [--batch 1] [--out perf/results/tp-small.md]

Each configuration runs --reps times, interleaved with the others so that
background load hits all alike; the table quotes medians. The 1-rank baseline
uses one thread too, so the ratio is the speed-up of adding ranks, not threads.
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
FFN = ["1d", "2d", "wg-x", "wg-xy", "wg-xyz"]
ATTN = ["heads", "batch"]
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}


def run(binary, model, ranks, layout, args):
    prompt = ",".join(str(1 + (i * 7919) % 31000) for i in range(args.prompt_len))
    cmd = [str(binary), "generate", "--model", str(model), "--prompt-ids", prompt,
           "--batch", str(args.batch), "--max-new-tokens", str(args.gen_len), "--threads", "1",
           "--json"]
    if layout:
        ffn, attn = layout
        cmd += ["--ffn-layout-prefill", ffn, "--ffn-layout-decode", ffn,
                "--attn-layout-prefill", attn, "--attn-layout-decode", attn]
    if ranks > 1:
        cmd = ["mpirun", "-n", str(ranks), "--bind-to", "core"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **MPI_ENV))
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd[:12])} ...\n{p.stderr}")
    return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--binary", default=str(REPO / "build" / "shardlm"))
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()

    configs = [(1, None)] + [(args.ranks, (f, a)) for f in FFN for a in ATTN]
    samples = {c: [] for c in configs}
    for _ in range(args.reps):
        for c in configs:
            samples[c].append(run(args.binary, args.model, c[0], c[1], args))

    def median(c, key):
        return statistics.median(s[key] for s in samples[c])

    base_prefill, base_decode = median(configs[0], "prefill_tokens_per_s"), median(configs[0], "decode_tokens_per_s")
    first = samples[configs[0]][0]
    lines = [
        f"# Tensor-parallel benchmark: {args.model}",
        "",
        f"{first['n_params'] / 1e6:.0f}M parameters; batch {args.batch}, prompt {args.prompt_len} tokens, "
        f"{args.gen_len} generated; one thread per rank; median of {args.reps} runs "
        f"(interleaved); backend {first['backend']}.",
        "",
        "| ranks | ffn layout | attention | prefill tok/s | decode tok/s | prefill ×1-rank | decode ×1-rank | peak RSS/rank MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in configs:
        ranks, layout = c
        prefill, decode = median(c, "prefill_tokens_per_s"), median(c, "decode_tokens_per_s")
        rss = max(samples[c][0]["peak_rss_mb_per_rank"])
        ffn, attn = layout or ("-", "-")
        lines.append(f"| {ranks} | {ffn} | {attn} | {prefill:.1f} | {decode:.2f} | "
                     f"{prefill / base_prefill:.2f} | {decode / base_decode:.2f} | {rss:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
