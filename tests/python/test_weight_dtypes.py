"""Weight dtypes of the CPU backend (`generate --weights f32|bf16|f16|int8`).

On a checkpoint whose values are bf16 (make-model --dtype bf16):
- bf16 weights hold exactly the f32 run's values, so logits agree to 1e-5 of
  the largest (only summation order may differ) and greedy tokens are equal;
- f16 holds every bf16 value of a normal f16 magnitude exactly; the tiny
  weights below 2^-14 become f16 subnormals and lose bits, so the bound is
  1e-4 of the largest logit; greedy tokens are equal;
- int8 (weight-only, per-output-channel scales: |error| <= scale / 2 per
  weight) stays within INT8_REL_TOL = 3e-2 of the largest logit (about 1.2e-2
  is measured on `tiny`), and the greedy token agrees at every position where
  the f32 run's top-2 margin exceeds twice that bound.
Prefill of 24 tokens runs the panel (oneDNN) path, decode steps the streaming
path; both are checked. Under mpirun, 16-bit and int8 weights are gathered
(weight-gathered layouts) or split (2d) and must give the one-rank logits."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

import llama_ref
from conftest import MPI_ENV, ids_arg, load_npy_f32, parse_single_json

PROMPT = [(i * 37) % 500 + 1 for i in range(24)]  # more rows than the streaming path takes
NEW_TOKENS = 6
NEAR_EXACT = {"bf16": 1e-5, "f16": 1e-4}
INT8_REL_TOL = 3e-2


def run(shardlm, model, weights, out_dir, ranks=None, extra=()):
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["generate", "--model", model, "--prompt-ids", ids_arg(PROMPT), "--max-new-tokens", NEW_TOKENS,
            "--dump-logits", out_dir / "prefill.npy", "--dump-step-logits", out_dir / "steps.npy",
            "--json", "--threads", 1, *extra]
    if weights is not None:
        args += ["--weights", weights]
    if ranks is None:
        p = shardlm.run(*args)
    else:
        cmd = ["mpirun", "-n", str(ranks), str(shardlm.path), *[str(a) for a in args]]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, **MPI_ENV))
        assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout[-3000:]}\nstderr: {p.stderr[-3000:]}"
    result = parse_single_json(p.stdout)
    return result["generated_ids"], load_npy_f32(out_dir / "prefill.npy"), load_npy_f32(out_dir / "steps.npy")


@pytest.fixture(scope="module")
def bf16_model(models):
    return models.get("tiny", "bf16")


@pytest.fixture(scope="module")
def f32_run(shardlm, bf16_model, tmp_path_factory):
    return run(shardlm, bf16_model, "f32", tmp_path_factory.mktemp("f32"))


@pytest.mark.parametrize("weights", ["bf16", "f16"])
def test_16bit_weights_are_near_exact(weights, shardlm, bf16_model, f32_run, tmp_path):
    tokens, prefill, steps = run(shardlm, bf16_model, weights, tmp_path)
    want_tokens, want_prefill, want_steps = f32_run
    assert np.all(np.isfinite(prefill)) and np.all(np.isfinite(steps))
    for got, want, what in ((prefill, want_prefill, "prefill"), (steps, want_steps, "decode steps")):
        err = llama_ref.max_rel_err(got, want)
        assert err <= NEAR_EXACT[weights], f"{weights} {what}: max rel err {err:.3g}"
    assert tokens == want_tokens


def test_default_keeps_the_checkpoint_dtype(shardlm, bf16_model, f32_run, tmp_path):
    tokens, prefill, _ = run(shardlm, bf16_model, None, tmp_path)
    assert llama_ref.max_rel_err(prefill, f32_run[1]) <= NEAR_EXACT["bf16"]
    assert tokens == f32_run[0]


def test_int8_weights_stay_within_the_documented_bound(shardlm, bf16_model, f32_run, tmp_path):
    tokens, prefill, steps = run(shardlm, bf16_model, "int8", tmp_path)
    want_tokens, want_prefill, want_steps = f32_run
    for got, want, what in ((prefill, want_prefill, "prefill"), (steps[:1], want_steps[:1], "first step")):
        err = llama_ref.max_rel_err(got, want)
        assert err <= INT8_REL_TOL, f"int8 {what}: max rel err {err:.3g}"
        # Quantization must change something, or the int8 path did not run.
        assert err > 1e-6, f"int8 {what}: logits identical to f32"
    top2 = np.sort(want_prefill, axis=1)[:, -2:]
    margin = (top2[:, 1] - top2[:, 0]) / np.max(np.abs(want_prefill))
    clear = margin > 2 * INT8_REL_TOL
    assert clear.any(), "no position has a clear greedy choice; the check would prove nothing"
    assert np.array_equal(prefill.argmax(axis=1)[clear], want_prefill.argmax(axis=1)[clear])


def test_weights_from_an_f32_checkpoint_round_like_a_bf16_checkpoint(shardlm, models, bf16_model,
                                                                      f32_run, tmp_path):
    """--weights bf16 on an f32 checkpoint rounds each weight to nearest even,
    as make-model's bf16 checkpoint did: this needs the same f32 values, so a
    bf16-valued f32 checkpoint is written from the bf16 one."""
    tensors = llama_ref.load_tensors(bf16_model)
    f32_dir = tmp_path / "as-f32"
    f32_dir.mkdir()
    (f32_dir / "config.json").write_text((bf16_model / "config.json").read_text())
    llama_ref.write_safetensors(f32_dir / "model.safetensors",
                                {k: v.astype(np.float32) for k, v in tensors.items()})
    tokens, prefill, steps = run(shardlm, f32_dir, "bf16", tmp_path / "out")
    assert llama_ref.max_rel_err(prefill, f32_run[1]) <= NEAR_EXACT["bf16"]
    assert llama_ref.max_rel_err(steps, f32_run[2]) <= NEAR_EXACT["bf16"]
    assert tokens == f32_run[0]


def test_unknown_weights_value_is_a_usage_error(shardlm, bf16_model):
    p = shardlm.run("generate", "--model", bf16_model, "--prompt-ids", "1,2", "--weights", "int4", check=False)
    assert p.returncode == 2
    assert "--weights" in p.stderr


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")
@pytest.mark.parametrize("weights", ["bf16", "int8"])
@pytest.mark.parametrize("ffn", ["2d", "wg-x", "wg-xy"])
def test_two_ranks_match_one_rank(weights, ffn, shardlm, bf16_model, tmp_path):
    one = run(shardlm, bf16_model, weights, tmp_path / "one")
    two = run(shardlm, bf16_model, weights, tmp_path / "two", ranks=2,
              extra=["--mesh", "2,1,1", "--ffn-layout-prefill", ffn, "--ffn-layout-decode", ffn])
    assert llama_ref.max_rel_err(two[1], one[1]) <= 1e-4
    assert llama_ref.max_rel_err(two[2], one[2]) <= 1e-4
    assert two[0] == one[0]
