"""KV cache dtypes (`generate --kv-dtype f32|bf16|f16`, default bf16).

An F32 cache gives the reference logits (1e-4 of the largest, as test_logits
states). A 16-bit cache rounds each K and V value once, to nearest even, when it
is written: relative error at most 2^-8 (bf16) or 2^-11 (f16) per value. Attention
weights and outputs are sums of these (on a CPU with AMX, decode attention over
a bf16 cache also rounds Q and P to bf16, errors of the same size as K's and V's:
kernels/cpu/amx_attention.cpp), so the logits move by a small multiple of that;
the bounds, of the largest f32-cache logit over prefill and every
decode step on `tiny` (24-token prompt, 6 new tokens), are
  bf16: 1e-2 (about 2e-3 measured), f16: 2e-3 (about 3e-4 measured),
and greedy tokens are equal where the f32 run's top-2 margin exceeds twice the
bound. Under mpirun the 16-bit cache is split, gathered and resharded between
the prefill and decode layouts in their own dtype, and pipeline
stages keep their layers' caches; both must give the one-rank 16-bit logits."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

import llama_ref
from conftest import MPI_ENV, ids_arg, load_npy_f32, parse_single_json

PROMPT = [(i * 37) % 500 + 1 for i in range(24)]
NEW_TOKENS = 6
BOUND = {"bf16": 1e-2, "f16": 2e-3}


def run(shardlm, model, kv, out_dir, ranks=None, extra=(), env=None):
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["generate", "--model", model, "--prompt-ids", ids_arg(PROMPT), "--max-new-tokens", NEW_TOKENS,
            "--dump-logits", out_dir / "prefill.npy", "--dump-step-logits", out_dir / "steps.npy",
            "--json", "--threads", 1, *extra]
    if kv is not None:
        args += ["--kv-dtype", kv]
    cmd = [str(shardlm.path), *[str(a) for a in args]]
    if ranks is not None:
        cmd = ["mpirun", "-n", str(ranks), *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env=dict(env if env is not None else os.environ, **MPI_ENV))
    assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout[-3000:]}\nstderr: {p.stderr[-3000:]}"
    result = parse_single_json(p.stdout)
    return result["generated_ids"], load_npy_f32(out_dir / "prefill.npy"), load_npy_f32(out_dir / "steps.npy")


def logits_err(a, b):
    return max(llama_ref.max_rel_err(a[1], b[1]), llama_ref.max_rel_err(a[2], b[2]))


@pytest.fixture(scope="module")
def model(models):
    return models.get("tiny")


@pytest.fixture(scope="module")
def f32_run(shardlm, model, tmp_path_factory):
    return run(shardlm, model, "f32", tmp_path_factory.mktemp("kv-f32"))


@pytest.fixture(scope="module")
def bf16_run(shardlm, model, tmp_path_factory):
    return run(shardlm, model, "bf16", tmp_path_factory.mktemp("kv-bf16"))


def test_f32_cache_gives_the_reference(model, f32_run, reference_cache):
    ref = reference_cache(model)
    tokens = f32_run[0][0]
    full = ref.forward(PROMPT + tokens[:-1])
    assert llama_ref.max_rel_err(f32_run[1], full[:len(PROMPT)]) <= 1e-4
    assert llama_ref.max_rel_err(f32_run[2], full[len(PROMPT) - 1:]) <= 1e-4


@pytest.mark.parametrize("kv", ["bf16", "f16"])
def test_16bit_cache_within_its_bound(kv, shardlm, model, f32_run, tmp_path):
    got = run(shardlm, model, kv, tmp_path)
    err = logits_err(got, f32_run)
    assert err <= BOUND[kv], f"{kv} KV cache: {err:.3g} of the largest logit"
    assert err > 1e-7, f"{kv} KV cache gives the f32 logits exactly: is it stored as {kv}?"
    # Greedy tokens agree up to the first step whose f32 choice is not clear
    # (step i's logits choose token i).
    want = f32_run[2]
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * BOUND[kv] * np.abs(want).max()
    first_unclear = int(np.argmin(clear)) if not clear.all() else len(clear)
    assert got[0][0][:first_unclear] == f32_run[0][0][:first_unclear]


def test_default_is_bf16(shardlm, model, bf16_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SHARDLM_KV_DTYPE"}
    got = run(shardlm, model, None, tmp_path, env=env)
    assert np.array_equal(got[1], bf16_run[1]) and np.array_equal(got[2], bf16_run[2])


def test_bad_kv_dtype_is_one_clear_line(shardlm, model):
    p = shardlm.run("generate", "--model", model, "--prompt-ids", "1,2", "--kv-dtype", "int8", check=False)
    assert p.returncode != 0
    assert "--kv-dtype int8: expected f32, bf16 or f16" in p.stderr


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")
@pytest.mark.parametrize("layout", [
    # Prefill and decode layouts that shard the cache differently: reshard.
    ("--mesh", "1,2,1", "--attn-layout-prefill", "heads", "--attn-layout-decode", "batch"),
    # Two pipeline stages, each with its layers' cache.
    ("--pp", "2"),
])
def test_16bit_cache_under_mpirun(layout, shardlm, model, bf16_run, tmp_path):
    got = run(shardlm, model, "bf16", tmp_path, ranks=2, extra=layout)
    # Partial sums in another order can round a K or V value the other way:
    # the one-rank bf16 logits within the bf16 bound, usually far closer.
    assert logits_err(got, bf16_run) <= BOUND["bf16"]
