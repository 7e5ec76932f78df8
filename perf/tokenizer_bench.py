#!/usr/bin/env python3
"""Encoding throughput of shardlm's tokenizer against Hugging Face's
`tokenizers`, both on one thread, on the test corpus
(tests/python/data/tokenizer_corpus.jsonl) made into documents.

For each tokenizer family (trained with `tokenizers` as the tests do,
tests/python/tokenizer_kinds.py) both encode the same documents --repeat
times; the figure is the median round, in MB/s of UTF-8 input, and the
ratio shardlm / tokenizers. Ids are checked equal before timing.

    python3 perf/tokenizer_bench.py [--shardlm build/shardlm] [--repeat 7] [--docs 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# One thread for `tokenizers`: set before it is imported.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
import tokenizer_kinds  # noqa: E402


def documents(n: int) -> list[str]:
    """n documents of 24 corpus lines each, a different rotation each time,
    so that both tokenizers see the same mix of scripts in every document."""
    texts = tokenizer_kinds.corpus_texts()
    return ["\n".join(texts[(i + k) % len(texts)] for k in range(24)) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shardlm", default=str(ROOT / "build" / "shardlm"))
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--kinds", default=",".join(tokenizer_kinds.KINDS))
    ap.add_argument("--json", action="store_true", help="print one JSON object per family")
    args = ap.parse_args()

    docs = documents(args.docs)
    total_mb = sum(len(d.encode()) for d in docs) / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "docs.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": d}) + "\n" for d in docs))
        for kind in args.kinds.split(","):
            tok = tokenizer_kinds.build(kind)
            directory = tokenizer_kinds.save(tok, kind, Path(tmp) / kind)
            # Equal ids first: a fast wrong tokenizer is no result.
            got = subprocess.run([args.shardlm, "tokenize", "--model", str(directory),
                                  "--prompt-file", str(prompts)], capture_output=True, text=True,
                                 check=True).stdout.split("\n")
            for doc, line in zip(docs, got):
                assert json.loads(line)["ids"] == tok.encode(doc).ids, f"{kind}: ids differ"
            hf_rounds = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                tok.encode_batch(docs)
                hf_rounds.append(time.perf_counter() - start)
            out = subprocess.run([args.shardlm, "tokenize", "--model", str(directory),
                                  "--prompt-file", str(prompts), "--repeat", str(args.repeat)],
                                 capture_output=True, text=True, check=True).stdout
            ours = json.loads(out)["seconds"]
            row = {
                "kind": kind,
                "mb": round(total_mb, 3),
                "tokenizers_mb_per_s": round(total_mb / statistics.median(hf_rounds), 2),
                "shardlm_mb_per_s": round(total_mb / statistics.median(ours), 2),
                "shardlm_first_round_mb_per_s": round(total_mb / ours[0], 2),
            }
            row["ratio"] = round(row["shardlm_mb_per_s"] / row["tokenizers_mb_per_s"], 2)
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        print(f"{total_mb:.2f} MB in {args.docs} documents, median of {args.repeat} rounds, "
              "one thread\n")
        print("| family | tokenizers MB/s | shardlm MB/s | ratio | shardlm first round MB/s |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['kind']} | {r['tokenizers_mb_per_s']} | {r['shardlm_mb_per_s']} | "
                  f"{r['ratio']} | {r['shardlm_first_round_mb_per_s']} |")


if __name__ == "__main__":
    main()
