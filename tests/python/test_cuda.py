"""`--backend`: the choice of backend on any machine, and the CUDA backend end
to end against the CPU backend where a CUDA device is visible.

The first group runs everywhere (CI has no GPU): a bad --backend is a usage
error, auto runs on the CPU without a device, --backend cuda without the
plugin or a device fails with a message naming --backend (once under
mpirun), and doctor reports the plugin.

The second group needs a device and is skipped, with the reason, without
one (doctor's "--backend auto:" line says cuda only where the plugin loads
and its CUDA runtime sees a device). scripts/gpu_check.sh runs it on the GPU
machine; with $SHARDLM_CUDA_REPORT set, each comparison appends one JSON
line (model, max |Δ|, bound) to that file for the check's summary.

The bound of the logits comparison. Both backends store the weights in bf16
(the models are written in bf16) and the KV cache in bf16 (--kv-dtype bf16
for both), and run with the same --activations. With bf16 activations (the
CUDA default) both round every operation's output to bf16 the same way, so
they differ only where F32 sums in another order (1e-7 relative) move a
rounding by one ulp. With f32 activations the CUDA backend rounds every
matmul's F32 input to bf16 on its way into the tensor cores and the CPU does
not: half an ulp, a relative error of at most 2^-8 per element and
2^-7.5/sqrt(12) ≈ 1.6e-3 standard deviation (uniform over an ulp that is 2^-7
to 2^-8 of the value), so a dot product of K terms with random signs errs by
about 1.6e-3 of its typical size. A tiny preset has 4 layers of 4 such matmul
stages in a row, plus the LM head: 17 roundings, which add like independent
errors through RMSNorm (which rescales, it does not amplify): sqrt(17) · 1.6e-3
≈ 6.6e-3 of a typical logit, σ. The maximum over 12 prompt positions × 32000
logits (3.8e5 draws) stays within about 5σ ≈ 3.3e-2 of the typical logit, and
the largest logit is several typical ones (random-weight logits are near
normal, so max |logit| ≈ 4 typical): max |Δ| ≤ 3e-2 · max |logit| leaves that
margin and still catches a wrong head, position or scale, whose errors are of
the order of the logits themselves. The one-ulp flips of the bf16 case stay
far below it (test_activations.py measures bf16 against f32 activations on the
CPU at 7.5e-3). Tensor parallelism over NCCL on top moves bf16 partial sums
(rounded before they are added): within the same bound, as
test_activations.py finds for MPI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import MPI_ENV, PROMPT, SUBPROCESS_ENV, ids_arg, load_npy_f32, parse_single_json

BOUND = 3e-2  # max |Δ| / max |logit|, derived in the module's docstring
NEW_TOKENS = 4
PRESETS = ["tiny", "tiny-mha", "tiny-mqa", "tiny-parallel", "tiny-llama3", "tiny-tied",
           "tiny-llama-bias", "tiny-qwen2", "tiny-mistral"]
# Past tiny-mistral's 16-token window and tiny-llama3's 32-token original context.
LONG_PROMPT = [(7 * i + 3) % 997 + 1 for i in range(40)]

has_mpirun = shutil.which("mpirun") is not None


def doctor_field(stdout: str, name: str) -> str:
    lines = [l for l in stdout.splitlines() if l.strip().startswith(name + ":")]
    assert len(lines) == 1, f"{name!r} not printed once by doctor:\n{stdout}"
    return lines[0].split(":", 1)[1].strip()


@pytest.fixture(scope="module")
def doctor(shardlm) -> str:
    return shardlm.run("doctor").stdout


@pytest.fixture(scope="module")
def cuda(doctor):
    """Skips a test unless --backend auto would run on CUDA here."""
    if doctor_field(doctor, "--backend auto") != "cuda":
        why = doctor_field(doctor, "CUDA backend")
        gpus = doctor_field(doctor, "GPUs") if "GPUs:" in doctor else "see doctor"
        pytest.skip(f"no usable CUDA device (CUDA backend: {why}; GPUs: {gpus})")


def report(**fields):
    path = os.environ.get("SHARDLM_CUDA_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(fields) + "\n")


# ---------------------------------------------------------------------------
# Everywhere
# ---------------------------------------------------------------------------


def test_unknown_backend_is_a_usage_error(shardlm, models):
    p = shardlm.run("generate", "--model", models.get("tiny"), "--prompt-ids", "1,2",
                    "--backend", "bogus", check=False)
    assert p.returncode == 2, p.stderr
    assert "--backend" in p.stderr and "bogus" in p.stderr, p.stderr


def test_auto_runs_on_the_cpu_without_a_device(shardlm, models, doctor):
    if doctor_field(doctor, "--backend auto") == "cuda":
        pytest.skip("a CUDA device is visible: auto runs on it (the GPU tests below)")
    out = shardlm.generate_json(models.get("tiny"), PROMPT, "--max-new-tokens", 2,
                                "--backend", "auto")
    assert out["backend"].startswith("cpu"), out["backend"]


def test_cuda_without_a_device_names_the_flag(shardlm, models):
    # An empty CUDA_VISIBLE_DEVICES hides every device, on a GPU machine too.
    env = dict(SUBPROCESS_ENV, CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([str(shardlm.path), "generate", "--model", str(models.get("tiny")),
                        "--prompt-ids", "1,2", "--backend", "cuda"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2, p.stderr
    plugin = shardlm.path.parent / "libshardlm_cuda.so"
    if plugin.exists():
        assert "--backend cuda: no CUDA device is visible (CUDA_VISIBLE_DEVICES=)" in p.stderr, \
            p.stderr
    else:
        assert "--backend cuda: this shardlm was built without the CUDA backend" in p.stderr, \
            p.stderr


@pytest.fixture
def shardlm_alone(shardlm, tmp_path) -> Path:
    """The binary copied where no libshardlm_cuda.so lies beside it."""
    copy = tmp_path / "bin" / "shardlm"
    copy.parent.mkdir()
    shutil.copy2(shardlm.path, copy)
    return copy


def test_cuda_without_the_plugin_names_the_flag_and_the_path(shardlm_alone, models):
    p = subprocess.run([str(shardlm_alone), "generate", "--model", str(models.get("tiny")),
                        "--prompt-ids", "1,2", "--backend", "cuda"],
                       capture_output=True, text=True, timeout=60, env=SUBPROCESS_ENV)
    assert p.returncode == 2, p.stderr
    assert ("shardlm: error: --backend cuda: this shardlm was built without the CUDA backend "
            f"(no libshardlm_cuda.so beside {shardlm_alone})") in p.stderr, p.stderr


@pytest.mark.skipif(not has_mpirun, reason="mpirun not installed")
def test_cuda_without_the_plugin_is_said_once_under_mpirun(shardlm_alone, models):
    p = subprocess.run(["mpirun", "-n", "2", str(shardlm_alone), "generate", "--model",
                        str(models.get("tiny")), "--prompt-ids", "1,2", "--backend", "cuda"],
                       capture_output=True, text=True, timeout=120,
                       env=dict(SUBPROCESS_ENV, **MPI_ENV))
    assert p.returncode != 0
    assert p.stderr.count("--backend cuda: this shardlm was built without") == 1, p.stderr


def test_bench_takes_the_flag(shardlm, models):
    p = shardlm.run("bench", "--model", models.get("tiny"), "--backend", "nope", check=False)
    assert p.returncode == 2 and "--backend" in p.stderr, p.stderr


def test_doctor_reports_the_plugin(doctor, shardlm, shardlm_alone):
    line = doctor_field(doctor, "CUDA backend")
    plugin = shardlm.path.parent / "libshardlm_cuda.so"
    if plugin.exists():
        assert line.startswith(f"{plugin} loads") or line.startswith(f"{plugin} does not load"), line
    else:
        assert line.startswith("not built"), line
    assert doctor_field(doctor, "--backend auto") in ("cpu", "cuda")
    alone = subprocess.run([str(shardlm_alone), "doctor"], capture_output=True, text=True,
                           timeout=60, env=SUBPROCESS_ENV)
    assert alone.returncode == 0, alone.stderr
    assert doctor_field(alone.stdout, "CUDA backend") == (
        f"not built (no {shardlm_alone.parent / 'libshardlm_cuda.so'} beside the executable)")
    assert doctor_field(alone.stdout, "--backend auto") == "cpu"


def test_cuda_graphs_flag_takes_on_or_off_and_the_cpu_backend_ignores_it(shardlm, models):
    p = shardlm.run("generate", "--model", models.get("tiny"), "--prompt-ids", "1,2",
                    "--cuda-graphs", "maybe", check=False)
    assert p.returncode == 2 and "--cuda-graphs" in p.stderr and "maybe" in p.stderr, p.stderr
    p = shardlm.run("bench", "--model", models.get("tiny"), "--cuda-graphs", "yes", check=False)
    assert p.returncode == 2 and "--cuda-graphs" in p.stderr, p.stderr
    runs = [shardlm.generate_json(models.get("tiny"), PROMPT, "--max-new-tokens", 3,
                                  "--backend", "cpu", "--cuda-graphs", graphs)
            for graphs in ("on", "off")]
    assert runs[0]["generated_ids"] == runs[1]["generated_ids"]
    assert all("cuda_graphs" not in r for r in runs), "the CPU backend reports no graphs"


# ---------------------------------------------------------------------------
# Where a CUDA device is visible
# ---------------------------------------------------------------------------


# NCCL before 2.30 refuses two ranks on one GPU ("Duplicate GPU detected": same
# host hash, same bus id). A host id of its own per rank makes the two ranks two
# NCCL hosts, joined by its socket transport over the loopback: slower, but the
# same collectives over the same device memory, which is what is tested.
SEPARATE_NCCL_HOSTS = ["bash", "-c", 'NCCL_HOSTID="shardlm-rank-$OMPI_COMM_WORLD_RANK" exec "$@"', "_"]
REFUSED = ("Duplicate GPU detected", "Multiple Ranks are using the same GPU")


def generate(shardlm, model, out_dir: Path, backend: str, prompt, ranks=None, extra=(),
             separate_hosts=False, nccl_debug="WARN", activations="bf16"):
    """Greedy generation with both logits dumps; the process and the output folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["generate", "--model", model, "--prompt-ids", ids_arg(prompt), "--max-new-tokens",
            NEW_TOKENS, "--backend", backend, "--kv-dtype", "bf16", "--activations", activations,
            "--dump-logits",
            out_dir / "prefill.npy", "--dump-step-logits", out_dir / "steps.npy", "--json",
            *extra]
    if ranks is None:
        p = shardlm.run(*args, check=False, timeout=120)
    else:
        # NCCL's warnings go to files: rank 0's stdout must hold the JSON alone.
        env = dict(SUBPROCESS_ENV, **MPI_ENV, NCCL_DEBUG=nccl_debug,
                   NCCL_DEBUG_FILE=str(out_dir / "nccl.%p.log"), NCCL_MULTI_RANK_GPU_ENABLE="1")
        if separate_hosts:
            env.update(NCCL_SOCKET_IFNAME="lo")
        wrapper = SEPARATE_NCCL_HOSTS if separate_hosts else []
        p = subprocess.run(["mpirun", "-n", str(ranks), *wrapper, str(shardlm.path),
                            *map(str, args)],
                           capture_output=True, text=True, timeout=180, env=env)
    return p, out_dir


def results(p, out_dir: Path):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout[-3000:]}\nstderr: {p.stderr[-3000:]}"
    return (parse_single_json(p.stdout), load_npy_f32(out_dir / "prefill.npy"),
            load_npy_f32(out_dir / "steps.npy"))


def compare(test: str, model: str, expected, actual) -> None:
    """Prefill logits, and the decode steps' logits up to the first step whose
    greedy token differs (a near-tie may go either way; what follows it then
    continues different text)."""
    ref, ref_prefill, ref_steps = expected
    out, prefill, steps = actual
    same = 0
    for a, b in zip(ref["generated_ids"][0], out["generated_ids"][0]):
        if a != b:
            break
        same += 1
    scale = float(np.abs(ref_prefill).max())
    assert np.isfinite(prefill).all() and np.isfinite(steps).all(), "non-finite logits"
    diff = float(np.abs(prefill - ref_prefill).max())
    if same > 0:
        diff = max(diff, float(np.abs(steps[:same] - ref_steps[:same]).max()))
    report(test=test, model=model, max_abs_diff=diff, max_abs_logit=scale,
           relative=diff / scale, bound=BOUND, steps_compared=same,
           tokens_expected=ref["generated_ids"][0], tokens=out["generated_ids"][0])
    assert diff <= BOUND * scale, (
        f"{model}: max |Δ| {diff:.4g} > {BOUND} · max |logit| {scale:.4g} "
        f"({diff / scale:.3g} relative)")


@pytest.mark.parametrize("preset", PRESETS)
def test_cuda_logits_match_the_cpu_backend(shardlm, models, cuda, preset, tmp_path):
    model = models.get(preset, "bf16")
    prompt = LONG_PROMPT if preset in ("tiny-mistral", "tiny-llama3") else PROMPT
    cpu = results(*generate(shardlm, model, tmp_path / "cpu", "cpu", prompt))
    gpu = results(*generate(shardlm, model, tmp_path / "cuda", "cuda", prompt))
    assert gpu[0]["backend"].startswith("cuda"), gpu[0]["backend"]
    assert "bf16 activations" in gpu[0]["backend"], gpu[0]["backend"]
    compare("cuda_vs_cpu", preset, cpu, gpu)


def test_cuda_f32_activations_match_the_cpu_backend(shardlm, models, cuda, tmp_path):
    """--activations f32: F32 between operations, each matmul's input rounded
    to the weights' bf16 on its way into the tensor cores."""
    model = models.get("tiny", "bf16")
    cpu = results(*generate(shardlm, model, tmp_path / "cpu", "cpu", PROMPT, activations="f32"))
    gpu = results(*generate(shardlm, model, tmp_path / "cuda", "cuda", PROMPT,
                            activations="f32"))
    assert "f32 activations" in gpu[0]["backend"], gpu[0]["backend"]
    compare("cuda_vs_cpu_f32_activations", "tiny", cpu, gpu)


@pytest.mark.skipif(not has_mpirun, reason="mpirun not installed")
@pytest.mark.parametrize("layout", [("2d", "heads"), ("1d", "batch")])
def test_tensor_parallel_over_nccl_matches_one_gpu(shardlm, models, cuda, layout, tmp_path):
    """Two ranks over NCCL (on one GPU where the machine has one) against one
    rank: the collectives move device memory."""
    model = models.get("tiny", "bf16")
    ffn, attn = layout
    flags = ["--mesh", "1,2,1", "--ffn-layout-prefill", ffn, "--ffn-layout-decode", ffn,
             "--attn-layout-prefill", attn, "--attn-layout-decode", attn]
    one = results(*generate(shardlm, model, tmp_path / "one", "cuda", PROMPT))
    p, out_dir = generate(shardlm, model, tmp_path / "two", "cuda", PROMPT, ranks=2,
                          extra=flags)
    said = p.stdout + p.stderr + "".join(f.read_text() for f in out_dir.glob("nccl.*.log"))
    how = "tensor_parallel"
    if p.returncode != 0 and any(r in said for r in REFUSED):
        p, out_dir = generate(shardlm, model, tmp_path / "two-hosts", "cuda", PROMPT, ranks=2,
                              extra=flags, separate_hosts=True)
        how = "tensor_parallel_nccl_sockets"
    two = results(p, out_dir)
    compare(f"{how}_{ffn}_{attn}", "tiny", one, two)


def nccl_said(p, out_dir: Path) -> str:
    return p.stdout + p.stderr + "".join(f.read_text() for f in out_dir.glob("nccl.*.log"))


@pytest.mark.skipif(not has_mpirun, reason="mpirun not installed")
def test_pipeline_stages_over_nccl_match_the_cpu_backend(shardlm, models, cuda, tmp_path):
    """Two pipeline stages on the GPU (one rank each, two micro-batches, a
    batch of two): the residual crosses the stage boundary by NCCL send/recv
    between the two ranks' device memory. Against the CPU backend on one rank
    within the module's bound, and against the CUDA backend on one rank. With
    a mesh of 1,1,1 per stage there is no tensor-parallel group, so the NCCL
    communicator NCCL reports set up (its INFO log) is the stage link's."""
    model = models.get("tiny", "bf16")
    batch = ["--batch", "2"]
    cpu = results(*generate(shardlm, model, tmp_path / "cpu", "cpu", PROMPT, extra=batch))
    one = results(*generate(shardlm, model, tmp_path / "one", "cuda", PROMPT, extra=batch))
    flags = [*batch, "--pp", "2", "--micro-batches", "2"]
    p, out_dir = generate(shardlm, model, tmp_path / "pp", "cuda", PROMPT, ranks=2, extra=flags,
                          nccl_debug="INFO")
    how = "pipeline_nccl"
    if p.returncode != 0 and any(r in nccl_said(p, out_dir) for r in REFUSED):
        p, out_dir = generate(shardlm, model, tmp_path / "pp-hosts", "cuda", PROMPT, ranks=2,
                              extra=flags, separate_hosts=True, nccl_debug="INFO")
        how = "pipeline_nccl_sockets"
    two = results(p, out_dir)
    assert two[0]["backend"].startswith("cuda"), two[0]["backend"]
    assert "Init COMPLETE" in nccl_said(p, out_dir), "no NCCL communicator was set up"
    compare(how, "tiny", cpu, two)
    compare(f"{how}_vs_one_gpu", "tiny", one, two)


# Three prompts of different lengths: their sequences generate different tokens.
GRAPH_PROMPTS = [PROMPT, [5, 17, 300, 42], [7, 99, 1000, 3, 11, 12]]
GRAPH_NEW_TOKENS = 8


def test_cuda_graphs_replay_the_eager_steps_exactly(shardlm, models, cuda, tmp_path):
    """Decode steps replayed from CUDA graphs run the kernels the eager steps
    run on the same inputs (the decode attention's plan depends on the cache's
    capacity only), so their logits are equal bit for bit: over 7 decode steps
    (one measured, one captured, the rest replayed) of a batch of one, and of
    a batch of three whose middle sequence stops early at a stop id, so that
    the batch changes shape mid-decode (a second graph)."""
    model = models.get("tiny", "bf16")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(ids_arg(p) for p in GRAPH_PROMPTS) + "\n")

    def run(name, graphs, source, extra=()):
        out = tmp_path / name
        out.mkdir()
        p = shardlm.run("generate", "--model", model, *source, "--max-new-tokens",
                        GRAPH_NEW_TOKENS, "--backend", "cuda", "--kv-dtype", "bf16",
                        "--dump-step-logits", out / "steps.npy", "--json", "--cuda-graphs",
                        graphs, *extra, check=False, timeout=120)
        assert p.returncode == 0, f"exit {p.returncode}\nstderr: {p.stderr[-3000:]}"
        return parse_single_json(p.stdout), load_npy_f32(out / "steps.npy")

    one = ["--prompt-ids", ids_arg(PROMPT)]
    three = ["--prompt-ids-file", prompts]
    probe, _ = run("probe", "off", three)
    ids = probe["generated_ids"]
    # A token sequence 1 makes first at its third token or later, and no other
    # sequence makes: it ends sequence 1 early.
    stop = next((t for j, t in enumerate(ids[1]) if j >= 2 and t not in ids[1][:j]
                 and t not in ids[0] and t not in ids[2]), None)
    stops = ["--stop-ids", str(stop)] if stop is not None else []
    for name, source in (("one", one), ("three", three)):
        extra = stops if name == "three" else []
        eager, eager_steps = run(f"{name}-off", "off", source, extra)
        graphs, graph_steps = run(f"{name}-on", "on", source, extra)
        assert graphs["generated_ids"] == eager["generated_ids"], name
        assert np.array_equal(graph_steps, eager_steps), (
            f"{name}: max |Δ| {float(np.abs(graph_steps - eager_steps).max()):.3g}")
        assert eager["cuda_graphs"]["on"] is False and eager["cuda_graphs"]["replayed"] == 0
        g = graphs["cuda_graphs"]
        report(test="cuda_graphs", model=f"tiny {name}", **g, stop_id=stop)
        steps = len(graphs["step_ms"])
        assert g["on"] is True and g["captured"] + g["replayed"] + g["eager"] == steps, g
        assert g["replayed"] >= 1, g
        if name == "one":
            assert (g["captured"], g["replayed"]) == (1, steps - 2), g
        # Sequence 1's last token came at decode step `last`; a shape that
        # lasts two steps or more is captured.
        last = len(eager["generated_ids"][1]) - 1
        if name == "three" and 2 <= last and steps - last >= 2:
            assert g["captured"] == 2, g


@pytest.mark.skipif(not has_mpirun, reason="mpirun not installed")
def test_cuda_graphs_under_tensor_parallelism_over_nccl(shardlm, models, cuda, tmp_path):
    """Two ranks over NCCL, decode steps captured with their collectives
    (NCCL records them into the graph) and replayed: equal to the same two
    ranks run eagerly, bit for bit."""
    model = models.get("tiny", "bf16")
    flags = ["--mesh", "1,2,1", "--batch", "2"]
    runs = {}
    for graphs in ("off", "on"):
        extra = [*flags, "--cuda-graphs", graphs]
        p, out_dir = generate(shardlm, model, tmp_path / graphs, "cuda", PROMPT, ranks=2,
                              extra=extra)
        if p.returncode != 0 and any(r in nccl_said(p, out_dir) for r in REFUSED):
            p, out_dir = generate(shardlm, model, tmp_path / f"{graphs}-hosts", "cuda", PROMPT,
                                  ranks=2, extra=extra, separate_hosts=True)
        runs[graphs] = results(p, out_dir)
    (off, off_prefill, off_steps), (on, on_prefill, on_steps) = runs["off"], runs["on"]
    assert on["generated_ids"] == off["generated_ids"]
    assert np.array_equal(on_prefill, off_prefill)
    assert np.array_equal(on_steps, off_steps), (
        f"max |Δ| {float(np.abs(on_steps - off_steps).max()):.3g}")
    report(test="cuda_graphs_tensor_parallel", model="tiny", **on["cuda_graphs"])
    assert on["cuda_graphs"]["replayed"] >= NEW_TOKENS - 3, on["cuda_graphs"]
