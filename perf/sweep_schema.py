"""The results.jsonl schema of `shardlm sweep` (docs/sweeps.md), checked field by
field: `validate(record)` lists what is wrong with one record, `load_results(path)`
reads a file and raises SchemaError naming the line and field of the first fault.
Used by the report (it draws nothing from a file it cannot trust) and the tests."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

SCHEMA = "shardlm.sweep.result/1"
STATUSES = ("ok", "failed", "timeout", "oom", "invalid")
MODES = ("measured", "predicted")
FFN = ("auto", "1d", "2d", "wg-x", "wg-xy", "wg-xyz")
ATTN = ("auto", "heads", "batch")
WEIGHTS = ("auto", "f32", "bf16", "f16", "int8")

# config key -> check of its value
_pos_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1
_int_or_auto = lambda v: v == "auto" or _pos_int(v)
CONFIG = {
    "model": lambda v: isinstance(v, str) and v != "",
    "hardware": lambda v: isinstance(v, str) and v != "",
    "chips": _pos_int,
    "mesh": lambda v: v == "auto" or (isinstance(v, str) and re.fullmatch(r"\d+,\d+,\d+", v)),
    "pp": _pos_int,
    "micro_batches": _int_or_auto,
    "ffn_prefill": lambda v: v in FFN,
    "ffn_decode": lambda v: v in FFN,
    "attn_prefill": lambda v: v in ATTN,
    "attn_decode": lambda v: v in ATTN,
    "weights": lambda v: v in WEIGHTS,
    "batch": _pos_int,
    "prompt_len": _pos_int,
    "gen_len": _pos_int,
    "threads": _pos_int,
    "repetitions": _pos_int,
    "warmup": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "dry_run": lambda v: isinstance(v, bool),
}
# Keys that records written before them lack.
OPTIONAL_CONFIG = {
    "activations": lambda v: v in ("auto", "f32", "bf16"),
}
SUMMARY_KEYS = ("mean", "p50", "p90", "p99")
METRIC_NUMBERS = (
    "prefill_ms", "decode_ms", "prefill_tokens_per_s", "decode_tokens_per_s", "prefill_mfu",
    "decode_mfu", "prefill_mbu", "decode_mbu", "prefill_cost_chip_ms_per_token",
    "decode_cost_chip_ms_per_token", "tokens_per_forward_prefill", "tokens_per_forward_decode")
PROVENANCE = ("sweep_command", "command", "git_commit", "git_dirty", "host", "cpu", "hardware",
              "versions", "blas", "load_average")


class SchemaError(ValueError):
    pass


def fnv1a64_hex(text: str) -> str:
    """The point hash: FNV-1a 64 over the config's compact JSON, keys sorted."""
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def config_hash(config: dict) -> str:
    return fnv1a64_hex(json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(rec) -> list[str]:
    """Every fault of one record, as 'field: what is wrong'."""
    if not isinstance(rec, dict):
        return ["record: not a JSON object"]
    errs = []

    def need(key, check, what):
        if key not in rec:
            errs.append(f"{key}: missing")
        elif not check(rec[key]):
            errs.append(f"{key}: expected {what}, got {json.dumps(rec[key])[:80]}")

    need("schema", lambda v: v == SCHEMA, SCHEMA)
    need("experiment", lambda v: isinstance(v, str), "a string")
    need("hash", lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{16}", v), "16 hex digits")
    need("label", lambda v: isinstance(v, str), "a string")
    need("mode", lambda v: v in MODES, " or ".join(MODES))
    need("status", lambda v: v in STATUSES, ", ".join(STATUSES))
    need("notes", lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
         "a list of strings")
    need("started_at", lambda v: isinstance(v, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", v),
         "an ISO 8601 UTC time")
    need("wall_s", lambda v: _number(v) and v >= 0, "seconds >= 0")
    need("config", lambda v: isinstance(v, dict), "an object")
    need("provenance", lambda v: isinstance(v, dict), "an object")
    if errs:
        return errs
    cfg = rec["config"]
    for key, check in CONFIG.items():
        if key not in cfg:
            errs.append(f"config.{key}: missing")
        elif not check(cfg[key]):
            errs.append(f"config.{key}: unexpected value {json.dumps(cfg[key])}")
    for key, check in OPTIONAL_CONFIG.items():
        if key in cfg and not check(cfg[key]):
            errs.append(f"config.{key}: unexpected value {json.dumps(cfg[key])}")
    for key in cfg:
        if key not in CONFIG and key not in OPTIONAL_CONFIG:
            errs.append(f"config.{key}: not a config key")
    if not errs and config_hash(cfg) != rec["hash"]:
        errs.append(f"hash: {rec['hash']} is not the hash of config ({config_hash(cfg)})")
    if "dry_run" in cfg and cfg["dry_run"] != (rec["mode"] == "predicted"):
        errs.append("mode: disagrees with config.dry_run")
    for key in PROVENANCE:
        if key not in rec["provenance"]:
            errs.append(f"provenance.{key}: missing")
    ok = rec["status"] == "ok"
    if ok != (rec.get("error") is None):
        errs.append("error: must be null exactly when status is ok")
    if not ok and not (isinstance(rec.get("error"), str) and rec["error"]):
        errs.append("error: a failed point needs its reason")
    for key in ("run", "predicted"):
        if key not in rec:
            errs.append(f"{key}: missing (null when unknown)")
    run = rec.get("run")
    if run is not None:
        mesh = run.get("mesh", {}) if isinstance(run, dict) else {}
        if not all(_pos_int(mesh.get(a)) for a in ("pp", "x", "y", "z")):
            errs.append("run.mesh: expected positive pp, x, y, z")
        elif ok and mesh["pp"] * mesh["x"] * mesh["y"] * mesh["z"] != cfg.get("chips"):
            errs.append("run.mesh: its size is not config.chips")
    pred = rec.get("predicted")
    if pred is not None:
        for phase in ("prefill", "decode"):
            p = pred.get(phase) if isinstance(pred, dict) else None
            if not isinstance(p, dict) or not _number(p.get("latency_s")):
                errs.append(f"predicted.{phase}.latency_s: missing or not a number")
    if "metrics" not in rec:
        errs.append("metrics: missing (null unless ok)")
        return errs
    m = rec["metrics"]
    if not ok:
        if m is not None:
            errs.append("metrics: must be null when status is not ok")
        return errs
    if not isinstance(m, dict):
        return errs + ["metrics: expected an object for an ok point"]
    predicted = rec["mode"] == "predicted"
    if predicted and pred is None:
        errs.append("predicted: a predicted point needs its prediction")
    for key in ("ttft_ms", "itl_ms", "e2e_ms"):
        s = m.get(key)
        if s is None and key == "itl_ms" and cfg["gen_len"] == 1 and not predicted:
            continue  # one generated token: no decode step to time
        if not isinstance(s, dict):
            errs.append(f"metrics.{key}: expected {{mean, p50, p90, p99}}")
            continue
        for q in SUMMARY_KEYS:
            v = s.get(q)
            if q == "mean" or not predicted:
                if not (_number(v) and v >= 0):
                    errs.append(f"metrics.{key}.{q}: expected a number >= 0")
            elif v is not None:
                errs.append(f"metrics.{key}.{q}: null for predicted points (one step time only)")
        if not predicted and all(_number(s.get(q)) for q in SUMMARY_KEYS[1:]):
            if not s["p50"] <= s["p90"] <= s["p99"]:
                errs.append(f"metrics.{key}: percentiles out of order")
    for key in METRIC_NUMBERS:
        if not (_number(m.get(key)) and m[key] >= 0):
            errs.append(f"metrics.{key}: expected a number >= 0")
    mem = m.get("peak_memory_mb_per_rank")
    if not (isinstance(mem, list) and len(mem) == cfg["chips"] and all(_number(v) for v in mem)):
        errs.append("metrics.peak_memory_mb_per_rank: expected one number per rank")
    samples = m.get("samples")
    if not isinstance(samples, dict):
        errs.append("metrics.samples: expected {ttft_ms, step_ms}")
    elif not predicted:
        if len(samples.get("ttft_ms", [])) != cfg["repetitions"]:
            errs.append("metrics.samples.ttft_ms: expected one per repetition")
        steps = samples.get("step_ms", [])
        if len(steps) > cfg["repetitions"] * max(cfg["gen_len"] - 1, 0):
            errs.append("metrics.samples.step_ms: more steps than repetitions x (gen_len - 1)")
    return errs


def load_results(path) -> list[dict]:
    """All records of a results.jsonl, each checked; SchemaError names FILE:LINE and the field."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith("\n"):
                raise SchemaError(f"{path}:{number}: unfinished last line (a sweep was killed "
                                  "mid-write; `shardlm sweep --resume` drops it)")
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SchemaError(f"{path}:{number}: not JSON ({e.msg})") from None
            errs = validate(rec)
            if errs:
                raise SchemaError(f"{path}:{number}: {errs[0]}"
                                  + (f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""))
            records.append(rec)
    if not records:
        raise SchemaError(f"{path}: holds no results")
    modes = {r["mode"] for r in records}
    if len(modes) > 1:
        raise SchemaError(f"{path}: mixes measured and predicted results")
    hashes = [r["hash"] for r in records]
    if len(set(hashes)) != len(hashes):
        dup = next(h for h in hashes if hashes.count(h) > 1)
        raise SchemaError(f"{path}: point {dup} is recorded twice")
    return records
