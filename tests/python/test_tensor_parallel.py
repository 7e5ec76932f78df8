"""Tensor parallelism: under mpirun with 1, 2 and 4 ranks (oversubscribed on
any core count), every feed-forward layout x attention layout, in prefill and
in decode, gives the single-process logits (to 1e-4 of the largest) and the
same greedy tokens, for the MHA, GQA, MQA and parallel-block presets, and for
the model families (biases split with their outputs or added after the
reduction, tied embeddings, scaled RoPE, sliding windows) on prompts longer
than their original RoPE context and window."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest

from conftest import MPI_ENV, load_npy_f32, parse_single_json

FFN = ["1d", "2d", "wg-x", "wg-xy", "wg-xyz"]
ATTN = ["heads", "batch"]
# One mesh per (preset, ranks), so that every axis carries a split somewhere.
MESHES = {
    ("tiny", 2): "2,1,1", ("tiny-mha", 2): "1,2,1", ("tiny-mqa", 2): "1,1,2", ("tiny-parallel", 2): "2,1,1",
    ("tiny", 4): "2,2,1", ("tiny-mha", 4): "1,2,2", ("tiny-mqa", 4): "2,1,2", ("tiny-parallel", 4): "4,1,1",
    ("tiny-llama-bias", 2): "1,2,1", ("tiny-qwen2", 2): "2,1,1", ("tiny-mistral", 2): "1,1,2",
    ("tiny-tied", 2): "2,1,1", ("tiny-llama3", 2): "1,2,1",
    ("tiny-llama-bias", 4): "2,2,1", ("tiny-qwen2", 4): "2,1,2", ("tiny-mistral", 4): "1,2,2",
    ("tiny-tied", 4): "2,2,1", ("tiny-llama3", 4): "1,2,2",
}
FAMILIES = ["tiny-llama-bias", "tiny-qwen2", "tiny-mistral", "tiny-tied", "tiny-llama3"]
# Every layout in both phases, and pairs whose attention sharding differs
# between phases (the KV cache is then resharded after prefill).
PAIRS = [((f, a), (f, a)) for f in FFN for a in ATTN] + [
    (("wg-xyz", "heads"), ("2d", "batch")),
    (("2d", "heads"), ("2d", "batch")),
    (("wg-x", "batch"), ("wg-xy", "heads")),
]
# Three prompts of different lengths: ragged rows, and a batch that 4 ranks
# cannot split evenly (one rank holds no sequence under batch sharding).
PROMPTS = "1,5,9,200,17,3000,45\n3,4,5\n7,8,9,10,11,12,13,14,15\n"
# For the families: past tiny-mistral's 16-token window and the llama3
# presets' 32-token original context, still ragged.
LONG_PROMPTS = "".join(",".join(str((7 * i + 3 * s) % 997 + 1) for i in range(n)) + "\n"
                       for s, n in ((1, 40), (2, 3), (3, 21)))
NEW_TOKENS = 5
TOLERANCE = 1e-4

pytestmark = pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")


def mpirun(shardlm, ranks, *args, env=None, timeout=120):
    cmd = ["mpirun", "-n", str(ranks), str(shardlm.path), *[str(a) for a in args]]
    full_env = dict(os.environ, **MPI_ENV, **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def run_generate(shardlm, model, prompts_file, out_dir, ranks=None, extra=()):
    args = ["generate", "--model", model, "--prompt-ids-file", prompts_file,
            "--max-new-tokens", NEW_TOKENS, "--dump-logits", out_dir / "prefill.npy",
            "--dump-step-logits", out_dir / "steps.npy", "--json", "--threads", 1, *extra]
    p = shardlm.run(*args) if ranks is None else mpirun(shardlm, ranks, *args)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout[-3000:]}\nstderr: {p.stderr[-3000:]}"
    result = parse_single_json(p.stdout)  # rank 0 alone prints
    return result, load_npy_f32(out_dir / "prefill.npy"), load_npy_f32(out_dir / "steps.npy")


@pytest.fixture(scope="module")
def prompts_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    (root / "short.txt").write_text(PROMPTS)
    (root / "long.txt").write_text(LONG_PROMPTS)
    return lambda preset: root / ("long.txt" if preset in FAMILIES else "short.txt")


@pytest.fixture(scope="module")
def prompts_file(prompts_files):
    return prompts_files("tiny")


@pytest.fixture(scope="module")
def single_rank(shardlm, models, prompts_files, tmp_path_factory):
    cache = {}

    def get(preset):
        if preset not in cache:
            out = tmp_path_factory.mktemp(f"single-{preset}")
            cache[preset] = run_generate(shardlm, models.get(preset, "f32"), prompts_files(preset), out)
        return cache[preset]

    return get


def assert_close(actual, expected, what):
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    err = np.abs(actual - expected).max() / np.abs(expected).max()
    assert err <= TOLERANCE, f"{what}: max error {err:.3g} of the largest logit (tolerance {TOLERANCE})"


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("preset", ["tiny", "tiny-mha", "tiny-mqa", "tiny-parallel"] + FAMILIES)
def test_every_layout_matches_single_rank(shardlm, models, prompts_files, single_rank, tmp_path,
                                          preset, ranks):
    expected, expected_prefill, expected_steps = single_rank(preset)
    mesh = MESHES[(preset, ranks)]
    failures = []
    for (ffn_p, attn_p), (ffn_d, attn_d) in PAIRS:
        what = f"{preset} on {ranks} ranks, mesh {mesh}: prefill {ffn_p}/{attn_p}, decode {ffn_d}/{attn_d}"
        out = tmp_path / f"{ffn_p}-{attn_p}-{ffn_d}-{attn_d}"
        out.mkdir()
        extra = ["--mesh", mesh, "--ffn-layout-prefill", ffn_p, "--attn-layout-prefill", attn_p,
                 "--ffn-layout-decode", ffn_d, "--attn-layout-decode", attn_d]
        try:
            result, prefill, steps = run_generate(shardlm, models.get(preset, "f32"),
                                                  prompts_files(preset), out, ranks, extra)
            assert result["generated_ids"] == expected["generated_ids"], f"{what}: greedy tokens differ"
            assert_close(prefill, expected_prefill, f"{what}: prefill logits")
            assert_close(steps, expected_steps, f"{what}: decode logits")
            assert result["ranks"] == ranks
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)


def test_one_rank_under_mpirun_matches(shardlm, models, prompts_file, single_rank, tmp_path):
    expected, expected_prefill, _ = single_rank("tiny")
    result, prefill, _ = run_generate(shardlm, models.get("tiny", "f32"), prompts_file, tmp_path, 1)
    assert result["generated_ids"] == expected["generated_ids"]
    assert_close(prefill, expected_prefill, "1 rank under mpirun")


def test_only_rank_zero_prints(shardlm, models):
    p = mpirun(shardlm, 4, "generate", "--model", models.get("tiny", "f32"), "--prompt-ids", "1,2,3",
               "--max-new-tokens", 2, "--threads", 1)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("sequence 0:") == 1, p.stdout
    p = mpirun(shardlm, 2, "generate", "--model", models.get("tiny", "f32"), "--prompt-ids", "1,2,3",
               "--max-new-tokens", 2, "--threads", 1, "--verbose")
    assert p.stdout.count("sequence 0:") == 2, p.stdout


@pytest.mark.parametrize("kind", ["throw", "segv", "abort"])
def test_a_failing_rank_ends_the_job(shardlm, models, kind):
    start = time.monotonic()
    p = mpirun(shardlm, 4, "generate", "--model", models.get("tiny", "f32"), "--prompt-ids", "1,2,3",
               "--max-new-tokens", 8, "--threads", 1, env={"SHARDLM_FAULT": f"2:{kind}"}, timeout=60)
    elapsed = time.monotonic() - start
    assert p.returncode != 0
    assert "rank 2" in p.stderr, p.stderr
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end"


def test_mesh_must_match_world_size(shardlm, models):
    p = mpirun(shardlm, 2, "generate", "--model", models.get("tiny", "f32"), "--prompt-ids", "1,2,3",
               "--mesh", "2,2,1")
    assert p.returncode == 2, p.stderr
    assert "--mesh" in p.stderr and "4 ranks" in p.stderr and "2" in p.stderr, p.stderr


def test_unsplittable_model_is_refused_before_loading(shardlm, models, tmp_path):
    model = models.get("tiny", "f32")
    # 8 heads and hidden size 256 do not split 3 ways; refused before any weight is read.
    broken = tmp_path / "no-weights"
    broken.mkdir()
    shutil.copy(model / "config.json", broken / "config.json")
    p = mpirun(shardlm, 3, "generate", "--model", broken, "--prompt-ids", "1,2,3", "--mesh", "1,3,1")
    assert p.returncode == 2, p.stderr
    assert "num_attention_heads = 8" in p.stderr and "3 parts" in p.stderr, p.stderr
    assert "safetensors" not in p.stderr, "the checkpoint was opened before the split was checked"


def test_layouts_that_store_weights_differently_are_refused(shardlm, models):
    p = mpirun(shardlm, 2, "generate", "--model", models.get("tiny", "f32"), "--prompt-ids", "1,2,3",
               "--mesh", "2,1,1", "--ffn-layout-prefill", "1d", "--ffn-layout-decode", "2d")
    assert p.returncode == 2, p.stderr
    assert "stores" in p.stderr, p.stderr


def test_plan_auto_picks_layouts_and_records_the_prediction(shardlm, models, prompts_file, single_rank,
                                                             tmp_path):
    expected, expected_prefill, _ = single_rank("tiny-mqa")
    result, prefill, _ = run_generate(shardlm, models.get("tiny-mqa", "f32"), prompts_file, tmp_path, 2,
                                      ["--plan", "auto", "--hardware", "cpu-local"])
    assert result["plan"] == "auto"
    assert result["generated_ids"] == expected["generated_ids"]
    assert_close(prefill, expected_prefill, "--plan auto")
    predicted = result["predicted"]
    for phase in ("prefill", "decode"):
        assert predicted[phase]["ffn_layout"] == result["layouts"][phase]["ffn"]
        assert predicted[phase]["attn_layout"] == result["layouts"][phase]["attn"]
        assert predicted[phase]["latency_s"] > 0
        assert predicted[phase]["mesh"] == result["mesh"]


def test_pinned_layouts_are_kept_under_plan_auto(shardlm, models):
    p = mpirun(shardlm, 2, "generate", "--model", models.get("tiny", "f32"), "--prompt-ids", "1,2,3",
               "--max-new-tokens", 2, "--threads", 1, "--json", "--plan", "auto",
               "--ffn-layout-decode", "wg-x", "--attn-layout-prefill", "batch")
    assert p.returncode == 0, p.stderr
    result = parse_single_json(p.stdout)
    assert result["layouts"]["decode"]["ffn"] == "wg-x"
    assert result["layouts"]["prefill"]["attn"] == "batch"


def test_unknown_hardware_spec_is_named(shardlm, models):
    p = shardlm.run("generate", "--model", models.get("tiny", "f32"), "--prompt-ids", "1,2,3",
                    "--plan", "auto", "--hardware", "no-such-machine", check=False)
    assert p.returncode == 1, p.stderr
    assert "no-such-machine" in p.stderr, p.stderr
