"""Activation dtypes (`generate --activations auto|f32|bf16`; auto: bf16 on
CUDA, f32 on the CPU).

With bf16 activations every tensor between operations (the residual stream,
the matmul outputs, the attention output, what the collectives move) is stored
rounded to bf16; each operation widens its inputs and computes in F32, so each
stored value errs by at most 2^-9 of itself, 2^-9/sqrt(3) ≈ 1.1e-3 standard
deviation. `tiny` (4 layers) stores about ten such values per layer on the path
to the logits (norm outputs, q/k/v, rotated q/k, attention output, the
residual after each projection, gate/up and their product) plus the final
norm: about 41 roundings, which add like independent errors (RMSNorm
rescales, it does not amplify): sqrt(41) · 1.1e-3 ≈ 7e-3 of a typical logit,
σ; the largest deviation over 30 positions × 32000 logits is within about
5σ ≈ 3.5e-2 of a typical logit, and the largest logit is about four typical
ones: about 9e-3 of the largest logit (measured against the f32 run: 7.5e-3).

Under mpirun the collectives carry bf16 (reduce-scatters and all-reduces sum
in F32 and round once per step, as NCCL does), so partial sums are rounded
before they are added, up to twice the roundings of one rank; two runs that
round independently differ by up to sqrt(2) times one's error again
(measured against the one-rank bf16 logits: 1.0e-2 with 2 ranks; layouts
without partial sums and the pipeline: equal). The bound, max |Δ| ≤ 3e-2 ·
max |logit| for both comparisons, leaves that margin; a wrong scale, head or
shard errs by the order of the logits."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from test_kv_dtype import logits_err, run

BOUND = 3e-2


@pytest.fixture(scope="module")
def model(models):
    return models.get("tiny")


@pytest.fixture(scope="module")
def f32_run(shardlm, model, tmp_path_factory):
    return run(shardlm, model, "f32", tmp_path_factory.mktemp("act-f32"),
               extra=["--activations", "f32"])


@pytest.fixture(scope="module")
def bf16_run(shardlm, model, tmp_path_factory):
    return run(shardlm, model, "f32", tmp_path_factory.mktemp("act-bf16"),
               extra=["--activations", "bf16"])


def test_bf16_activations_within_their_bound(f32_run, bf16_run):
    err = logits_err(bf16_run, f32_run)
    print(f"bf16 activations against f32: {err:.3g} of the largest logit")
    assert err <= BOUND, f"bf16 activations: {err:.3g} of the largest logit"
    assert err > 1e-6, "bf16 activations give the f32 logits exactly: are they stored as bf16?"
    # Greedy tokens agree up to the first step whose f32 choice is not clear.
    want = f32_run[2]
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * BOUND * np.abs(want).max()
    first_unclear = int(np.argmin(clear)) if not clear.all() else len(clear)
    assert bf16_run[0][0][:first_unclear] == f32_run[0][0][:first_unclear]


def test_auto_is_f32_on_the_cpu(shardlm, model, f32_run, tmp_path):
    got = run(shardlm, model, "f32", tmp_path, extra=["--activations", "auto"])
    assert np.array_equal(got[1], f32_run[1]) and np.array_equal(got[2], f32_run[2])


def test_the_backend_says_its_activations(shardlm, model):
    p = shardlm.run("generate", "--model", model, "--prompt-ids", "1,2", "--max-new-tokens", "1",
                    "--activations", "bf16", "--json")
    assert "bf16 activations" in p.stdout


def test_bad_activations_flag_is_one_clear_line(shardlm, model):
    p = shardlm.run("generate", "--model", model, "--prompt-ids", "1,2", "--activations", "f16",
                    check=False)
    assert p.returncode != 0
    assert "--activations f16: expected auto, f32 or bf16" in p.stderr


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")
@pytest.mark.parametrize("layout", [
    # Reduce-scatters and all-gathers of bf16 partial sums.
    ("--mesh", "2,1,1", "--ffn-layout-prefill", "1d", "--ffn-layout-decode", "1d"),
    # 2-D weight-stationary, attention over the batch: all-to-alls too.
    ("--mesh", "1,2,1", "--attn-layout-prefill", "batch", "--attn-layout-decode", "batch"),
    # Weights gathered, activations moved by rows.
    ("--mesh", "1,1,2", "--ffn-layout-prefill", "wg-xyz", "--ffn-layout-decode", "wg-xyz",
     "--attn-layout-prefill", "batch", "--attn-layout-decode", "batch"),
    # A pipeline: the residual crosses the stage boundary.
    ("--pp", "2"),
])
def test_bf16_activations_under_mpirun(layout, shardlm, model, bf16_run, tmp_path):
    got = run(shardlm, model, "f32", tmp_path, ranks=2, extra=["--activations", "bf16", *layout])
    err = logits_err(got, bf16_run)
    print(f"{' '.join(layout)}: {err:.3g} of the largest logit from one rank")
    assert err <= BOUND, f"{layout}: {err:.3g} of the largest logit from one rank"


def test_bf16_weights_take_the_bf16_dot_kernel_within_the_bound(shardlm, models, tmp_path):
    """A bf16 checkpoint: BF16 activations meet BF16 weights in vdpbf16ps where
    the CPU has AVX512-BF16 (the 24-token prefill and the 1-row decode steps
    both take it); the bound is the same, the products being exact."""
    model = models.get("tiny", "bf16")
    f32 = run(shardlm, model, "f32", tmp_path / "f32", extra=["--activations", "f32"])
    bf16 = run(shardlm, model, "f32", tmp_path / "bf16", extra=["--activations", "bf16"])
    err = logits_err(bf16, f32)
    print(f"bf16 weights, bf16 activations against f32: {err:.3g} of the largest logit")
    assert 1e-6 < err <= BOUND
