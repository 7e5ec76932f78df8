"""Pipeline parallelism: stages of tensor-parallel groups under mpirun (up to
8 ranks, oversubscribed). Logits at every prompt position, the logits each
token was sampled from and the greedy tokens equal the single-rank run
(within 1e-4 of the largest logit) for pp in {2, 4}, tensor-parallel groups
of 1 and 2 ranks, every feed-forward layout and both attention layouts inside
the stages, on the GQA, MQA and parallel-block presets; with batches the
micro-batches do not divide, uneven --pp-layers, and single prompts chunked
through the pipeline. Bad pipeline flags are usage errors printed once; a
failing rank of any stage ends the job."""

from __future__ import annotations

import shutil
import time

import pytest

from conftest import parse_single_json
from test_tensor_parallel import ATTN, FFN, assert_close, mpirun, run_generate

pytestmark = pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")

# Three ragged prompts: 2 or 4 micro-batches never divide them evenly.
PROMPTS = "1,5,9,200,17,3000,45,7,7,1\n3,4,5\n7,8,9,10,11,12,13,14,15\n"
# One prompt, chunked through the pipeline by tokens.
ONE_PROMPT = "2,9,4,31,77,5,6,1000,8,13,21,34,55,89,144,233,377\n"
PAIRS = [((f, a), (f, a)) for f in FFN for a in ATTN] + [(("wg-xyz", "heads"), ("2d", "batch"))]


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pp-prompts")
    (root / "three.txt").write_text(PROMPTS)
    (root / "one.txt").write_text(ONE_PROMPT)
    return {"three": root / "three.txt", "one": root / "one.txt"}


@pytest.fixture(scope="module")
def reference(shardlm, models, prompt_files, tmp_path_factory):
    cache = {}

    def get(preset, prompts):
        if (preset, prompts) not in cache:
            out = tmp_path_factory.mktemp(f"ref-{preset}-{prompts}")
            cache[(preset, prompts)] = run_generate(shardlm, models.get(preset, "f32"),
                                                    prompt_files[prompts], out)
        return cache[(preset, prompts)]

    return get


def check_case(shardlm, models, prompt_files, reference, tmp_path, preset, ranks, pp, mesh, pairs,
               prompts="three", extra=()):
    expected, expected_prefill, expected_steps = reference(preset, prompts)
    failures = []
    for (ffn_p, attn_p), (ffn_d, attn_d) in pairs:
        what = (f"{preset}, pp={pp} mesh {mesh} {' '.join(map(str, extra))}: prefill {ffn_p}/{attn_p}, "
                f"decode {ffn_d}/{attn_d}")
        out = tmp_path / f"{ffn_p}-{attn_p}-{ffn_d}-{attn_d}"
        out.mkdir()
        args = ["--pp", pp, "--mesh", mesh, "--ffn-layout-prefill", ffn_p, "--attn-layout-prefill",
                attn_p, "--ffn-layout-decode", ffn_d, "--attn-layout-decode", attn_d, *extra]
        try:
            result, prefill, steps = run_generate(shardlm, models.get(preset, "f32"),
                                                  prompt_files[prompts], out, ranks, args)
            assert result["generated_ids"] == expected["generated_ids"], f"{what}: greedy tokens differ"
            assert_close(prefill, expected_prefill, f"{what}: prefill logits")
            assert_close(steps, expected_steps, f"{what}: decode logits")
            assert result["pp"] == pp and result["ranks"] == ranks
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("preset", ["tiny", "tiny-mqa", "tiny-parallel"])
@pytest.mark.parametrize("pp,extra", [
    (2, ["--micro-batches", 2]),
    (2, ["--micro-batches", 3, "--pp-layers", "1,3"]),
    (4, ["--micro-batches", 2]),
    (4, ["--micro-batches", 4]),
])
def test_stages_of_one_rank(shardlm, models, prompt_files, reference, tmp_path, preset, pp, extra):
    check_case(shardlm, models, prompt_files, reference, tmp_path, preset, pp, pp, "1,1,1",
               [(("2d", "heads"), ("2d", "heads"))], extra=extra)


@pytest.mark.parametrize("preset,mesh", [("tiny", "2,1,1"), ("tiny-mqa", "1,2,1"),
                                         ("tiny-parallel", "1,1,2")])
def test_two_stages_of_two_ranks_every_layout(shardlm, models, prompt_files, reference, tmp_path,
                                               preset, mesh):
    check_case(shardlm, models, prompt_files, reference, tmp_path, preset, 4, 2, mesh, PAIRS,
               extra=["--micro-batches", 2, "--pp-layers", "3,1"])


@pytest.mark.parametrize("preset,mesh", [("tiny", "1,2,1"), ("tiny-mqa", "2,1,1"),
                                         ("tiny-parallel", "2,1,1")])
def test_four_stages_of_two_ranks(shardlm, models, prompt_files, reference, tmp_path, preset, mesh):
    check_case(shardlm, models, prompt_files, reference, tmp_path, preset, 8, 4, mesh,
               [(("2d", "heads"), ("2d", "batch")), (("wg-xy", "batch"), ("2d", "heads"))],
               extra=["--micro-batches", 3])


@pytest.mark.parametrize("pp,ranks,mesh", [(2, 2, "1,1,1"), (4, 4, "1,1,1"), (2, 4, "2,1,1")])
def test_one_prompt_in_chunks(shardlm, models, prompt_files, reference, tmp_path, pp, ranks, mesh):
    check_case(shardlm, models, prompt_files, reference, tmp_path, "tiny", ranks, pp, mesh,
               [(("2d", "heads"), ("2d", "heads")), (("wg-x", "batch"), ("wg-x", "batch"))],
               prompts="one", extra=["--micro-batches", 5])


def test_sampling_and_stops_are_independent_of_the_pipeline(shardlm, models, prompt_files):
    """Seeded sampling gives the single-rank tokens, and stop ids end sequences
    of different micro-batches at different steps."""
    def tokens(ranks, *extra):
        args = ["generate", "--model", models.get("tiny", "f32"), "--prompt-ids-file",
                prompt_files["three"], "--max-new-tokens", 12, "--temperature", 0.9, "--top-k", 40,
                "--seed", 11, "--json", "--threads", 1, *extra]
        p = shardlm.run(*args) if ranks == 1 else mpirun(shardlm, ranks, *args)
        assert p.returncode == 0, p.stderr
        return parse_single_json(p.stdout)["generated_ids"]

    single = tokens(1)
    # Stop on a token sequence 1 draws early and the others do not (or later).
    stop = single[1][3]
    stopped = tokens(1, "--stop-ids", stop)
    assert len(stopped[1]) <= 4 and stopped != single
    for ranks, extra in ((2, ["--pp", 2, "--micro-batches", 2]), (4, ["--pp", 4, "--micro-batches", 3]),
                         (4, ["--pp", 2, "--mesh", "2,1,1", "--micro-batches", 3])):
        assert tokens(ranks, *extra) == single, extra
        assert tokens(ranks, *extra, "--stop-ids", stop) == stopped, extra


def test_json_reports_the_pipeline(shardlm, models, prompt_files):
    p = mpirun(shardlm, 2, "generate", "--model", models.get("tiny", "f32"), "--prompt-ids-file",
               prompt_files["three"], "--max-new-tokens", 4, "--pp", 2, "--json", "--threads", 1)
    assert p.returncode == 0, p.stderr
    r = parse_single_json(p.stdout)
    pipe = r["pipeline"]
    assert r["pp"] == 2 and pipe["pp"] == 2 and sum(pipe["layers_per_stage"]) == 4
    assert pipe["micro_batches"] == {"prefill": 2, "decode": 2}
    # Fill and drain once with 2 micro-batches on 2 stages: 1/3 idle.
    assert pipe["predicted_bubble"]["prefill"] == pytest.approx(1 / 3)
    for phase in ("prefill", "decode"):
        assert len(pipe["measured"]["stage_busy_ms"][phase]) == 2
        assert all(b > 0 for b in pipe["measured"]["stage_busy_ms"][phase])
        assert 0 <= pipe["measured"]["bubble"][phase] < 1
    assert r["predicted"]["decode"]["pp"] == 2


@pytest.mark.parametrize("ranks,args,names", [
    (8, ["--pp", 8], ["--pp 8", "4 layers"]),
    (2, ["--pp", 2, "--pp-layers", "2,1"], ["--pp-layers", "3 layers", "4"]),
    (2, ["--pp", 2, "--pp-layers", "0,4"], ["--pp-layers", "at least one layer"]),
    (2, ["--pp", 2, "--pp-layers", "1,1,2"], ["--pp-layers", "3 stages"]),
    (4, ["--pp", 2, "--mesh", "2,2,1"], ["--pp 2", "8 ranks", "4"]),
    (3, ["--pp", 2], ["--pp 2", "3 ranks"]),
])
def test_bad_pipeline_flags(shardlm, models, tmp_path, ranks, args, names):
    # No weights in the directory: the error must come before any is read.
    model = tmp_path / "no-weights"
    model.mkdir()
    shutil.copy(models.get("tiny", "f32") / "config.json", model / "config.json")
    p = mpirun(shardlm, ranks, "generate", "--model", model, "--prompt-ids", "1,2,3", *args)
    assert p.returncode == 2, p.stderr
    errors = [l for l in p.stderr.splitlines() if "shardlm: error:" in l]
    assert len(errors) == 1, p.stderr  # printed once
    for n in names:
        assert n in errors[0], errors[0]
    assert "safetensors" not in p.stderr


# Mesh 2,1,1 with 2 stages: ranks 0 and 1 are stage 0, ranks 2 and 3 stage 1.
@pytest.mark.parametrize("rank,fault,stage", [
    (2, "throw:prefill:1", 1),  # the second prefill micro-batch, on the last stage
    (3, "segv:decode:3", 1),    # mid-decode, on the last stage
    (0, "abort:decode:2", 0),   # the first stage, which drives the schedule
    (1, "throw:decode:5", 0),
])
def test_a_failing_stage_ends_the_job(shardlm, models, prompt_files, rank, fault, stage):
    start = time.monotonic()
    p = mpirun(shardlm, 4, "generate", "--model", models.get("tiny", "f32"), "--prompt-ids-file",
               prompt_files["three"], "--max-new-tokens", 10, "--pp", 2, "--mesh", "2,1,1",
               "--threads", 1, env={"SHARDLM_FAULT": f"{rank}:{fault}"}, timeout=60)
    elapsed = time.monotonic() - start
    assert p.returncode != 0
    assert f"rank {rank} (stage {stage})" in p.stderr, p.stderr
    assert elapsed < 15, f"the job took {elapsed:.1f} s to end"


def test_layouts_shows_the_stages(shardlm, models):
    p = shardlm.run("layouts", "--model", models.get("tiny", "f32"), "--mesh", "2,1,1", "--pp", 2,
                    "--pp-layers", "3,1")
    assert "stage 0: layers 0-2" in p.stdout and "embedding" in p.stdout.split("stage 1")[0], p.stdout
    assert "stage 1: layers 3-3" in p.stdout and "lm_head" in p.stdout.split("stage 1")[1], p.stdout


def test_plan_auto_may_choose_the_pipeline_depth(shardlm, models, prompt_files, reference, tmp_path):
    """Without --mesh or --pp, --plan auto picks the mesh, pipeline depth
    included, and the run it picks gives the single-rank result."""
    expected, expected_prefill, _ = reference("tiny", "three")
    result, prefill, _ = run_generate(shardlm, models.get("tiny", "f32"), prompt_files["three"], tmp_path,
                                      4, ["--plan", "auto", "--hardware", "cpu-local"])
    assert result["generated_ids"] == expected["generated_ids"]
    assert_close(prefill, expected_prefill, "--plan auto")
    predicted = result["predicted"]
    assert result["pp"] == predicted["decode"]["pp"] == predicted["prefill"]["pp"]
    assert result["mesh"] == predicted["decode"]["mesh"]
    assert sum(result["pipeline"]["layers_per_stage"]) == 4
