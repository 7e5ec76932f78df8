"""`shardlm sweep` and `shardlm report` end to end: a three-point sweep with one
point that cannot run, results.jsonl against its schema, --resume, the report's
figures, every failure status (through a stand-in launcher), Ctrl-C, dry runs,
and experiment-file errors naming the file, line and key."""

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import MPI_ENV, REPO_ROOT, SUBPROCESS_ENV

sys.path.insert(0, str(REPO_ROOT / "perf"))
import sweep_schema  # noqa: E402

ENV = dict(SUBPROCESS_ENV, **MPI_ENV)

pytestmark = pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")


def sweep(shardlm, *args, check=True, timeout=120):
    p = subprocess.run([str(shardlm.path), *[str(a) for a in args]], capture_output=True, text=True,
                       env=ENV, timeout=timeout)
    if check and p.returncode != 0:
        pytest.fail(f"exit {p.returncode}: {args}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def error_line(stderr):
    lines = [l for l in stderr.splitlines() if l.startswith("shardlm: error:")]
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    return lines[0]


def records(out):
    return sweep_schema.load_results(Path(out) / "results.jsonl")


# The three points: 1 and 2 ranks with 2d everywhere, and a 2d prefill / 1d
# decode mix on x = 2, which the runtime refuses before loading (the weights
# are stored once, and the two layouts store them differently).
THREE = """\
name: three-points
hardware: cpu-local
launcher:
  args: [--oversubscribe]
repetitions: 2
warmup: 1
timeout_s: 120
grid:
  model: {model}
  mesh: ["1,1,1", "2,1,1"]
  ffn_prefill: 2d
  ffn_decode: [2d, 1d]
  attn: heads
  batch: 2
  prompt_len: 6
  gen_len: 4
exclude:
  - {{mesh: "1,1,1", ffn_decode: 1d}}
"""


@pytest.fixture(scope="module")
def three(shardlm, models, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    exp = root / "three.yaml"
    exp.write_text(THREE.format(model=models.get("tiny")))
    out = root / "out"
    p = sweep(shardlm, "sweep", exp, "--out", out)
    return exp, out, p


def test_three_point_sweep_records_every_point(three):
    exp, out, p = three
    assert "ran 3 point(s): 2 ok, 1 invalid" in p.stdout, p.stdout
    recs = records(out)  # every line checked against the schema
    assert [r["status"] for r in recs] == ["ok", "ok", "invalid"]
    bad = recs[2]
    assert bad["config"]["mesh"] == "2,1,1" and bad["config"]["ffn_decode"] == "1d"
    assert "1d decode layout" in bad["error"], bad["error"]
    assert bad["metrics"] is None and (out / bad["log"]).is_file()
    for r, chips in zip(recs[:2], (1, 2)):
        m = r["metrics"]
        assert r["config"]["chips"] == chips and r["run"]["mesh"]["x"] == chips
        assert len(m["samples"]["ttft_ms"]) == 2  # one per repetition
        assert len(m["samples"]["step_ms"]) == 2 * 3  # gen_len - 1 steps per repetition
        assert 0 < m["itl_ms"]["p50"] <= m["itl_ms"]["p99"]
        assert m["prefill_tokens_per_s"] > 0 and m["decode_mfu"] > 0
        assert len(m["peak_memory_mb_per_rank"]) == chips
        assert r["predicted"]["prefill"]["latency_s"] > 0
        prov = r["provenance"]
        assert prov["command"][:3] == ["mpirun", "-n", str(chips)] and "--warmup" in prov["command"]
        assert re.fullmatch(r"[0-9a-f]{40}|unknown", prov["git_commit"])
        assert "cpu" in prov["blas"]
    assert (out / "experiment.yaml").read_text() == exp.read_text()


def test_dry_run_prices_the_decode_steps_generate_predicts(three, shardlm):
    # generate runs gen_len - 1 decode steps (the first token comes from
    # prefill) and predicts them; a dry run of the same points prices the same.
    exp, out, _ = three
    dry = out.parent / "three-dry"
    sweep(shardlm, "sweep", exp, "--out", dry, "--dry-run")
    measured = {r["config"]["chips"]: r for r in records(out) if r["status"] == "ok"}
    dry_recs = records(dry)
    # The 2d prefill / 1d decode mix on x = 2 is refused as generate refuses it.
    assert [r["status"] for r in dry_recs] == ["ok", "ok", "invalid"]
    assert "1d decode layout" in dry_recs[2]["error"], dry_recs[2]["error"]
    predicted = [r for r in dry_recs if r["status"] == "ok"]
    assert len(predicted) == len(measured) == 2
    for r in predicted:
        m = measured[r["config"]["chips"]]
        gen = r["config"]["gen_len"]
        dec, want = r["predicted"]["decode"], m["predicted"]["decode"]
        assert dec["forward_passes"] == want["forward_passes"] == gen - 1
        assert dec["latency_s"] == pytest.approx(want["latency_s"], rel=1e-9)
        assert r["metrics"]["itl_ms"]["mean"] == pytest.approx(
            dec["latency_s"] * 1e3 / (gen - 1), rel=1e-9)
        assert r["predicted"]["prefill"]["latency_s"] == pytest.approx(
            m["predicted"]["prefill"]["latency_s"], rel=1e-9)


def test_schema_catches_damaged_records(three):
    _, out, _ = three
    good = records(out)[0]
    assert sweep_schema.validate(good) == []
    cases = {
        "hash": lambda r: r.update(hash="0" * 16),
        "metrics.itl_ms": lambda r: r["metrics"].pop("itl_ms"),
        "error": lambda r: r.update(status="failed"),
        "config.batch": lambda r: r["config"].update(batch=0),
        "metrics.peak_memory_mb_per_rank": lambda r: r["metrics"].update(peak_memory_mb_per_rank=[]),
        "config.activations": lambda r: r["config"].update(activations="f16"),
    }
    for field, damage in cases.items():
        r = json.loads(json.dumps(good))
        damage(r)
        errs = sweep_schema.validate(r)
        assert any(e.startswith(field) for e in errs), (field, errs)
    # A record written before `activations` was a key (hashed without it) is whole.
    old = json.loads(json.dumps(good))
    del old["config"]["activations"]
    old["hash"] = sweep_schema.config_hash(old["config"])
    assert sweep_schema.validate(old) == []


def test_resume_runs_nothing_new(shardlm, three):
    exp, out, _ = three
    before = (out / "results.jsonl").read_bytes()
    p = sweep(shardlm, "sweep", exp, "--out", out, "--resume")
    assert "3 already in" in p.stderr and "0 to run" in p.stderr, p.stderr
    assert (out / "results.jsonl").read_bytes() == before
    # Without --resume an existing sweep is never appended to or overwritten.
    p = sweep(shardlm, "sweep", exp, "--out", out, check=False)
    assert p.returncode == 2 and "--resume" in error_line(p.stderr)
    assert (out / "results.jsonl").read_bytes() == before


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND", f"{path}: damaged PNG"
    return struct.unpack(">II", data[16:24])


def test_report_draws_every_figure(shardlm, three):
    _, out, _ = three
    p = sweep(shardlm, "report", out)
    assert "4 figures" in p.stdout, p.stdout
    manifest = json.loads((out / "figures.json").read_text())
    figs = {f["name"]: f for f in manifest}
    for f in manifest:
        w, h = png_size(out / f["png"])
        assert w > 300 and h > 200
        import matplotlib.image

        assert matplotlib.image.imread(out / f["png"]).shape[:2] == (h, w)
        assert ET.parse(out / f["svg"]).getroot().tag.endswith("svg")
    # Two configurations ran (1 and 2 ranks): one curve each, plus the Pareto front.
    for panel in figs["cost_vs_latency"]["panels"]:
        assert len(panel["series"]) == 2 and panel["guides"] == ["Pareto front"], panel
        assert "(ms)" in panel["xlabel"] and "chip-ms per token" in panel["ylabel"]
    assert len(figs["latency_vs_chips"]["panels"][0]["series"]) == 1  # 2d + heads
    pvm = figs["predicted_vs_measured"]["panels"][0]
    assert len(pvm["series"]) == 2 and pvm["guides"] == ["y = x"]
    assert all(len(p["series"]) == 3 for p in figs["latency_percentiles"]["panels"])  # p50 p90 p99
    md = (out / "report.md").read_text()
    # Every point has the same batch and prompt: nothing to draw MFU against.
    assert "mfu_vs_tokens" not in figs and "MFU against tokens per forward pass: not drawn" in md
    assert "## Failed points" in md and "| invalid |" in md and "1d decode layout" in md
    assert "![cost_vs_latency](figures/cost_vs_latency.png)" in md
    assert "## Best configuration per objective" in md


FAKE_LAUNCHER = """#!/bin/bash
# Stands in for mpirun: what it does depends on the point's --batch.
batch=$(echo "$@" | sed -E 's/.*--batch ([0-9]+).*/\\1/')
case $batch in
  1) echo "shardlm: error: rank 0: injected failure" >&2; exit 1 ;;
  2) kill -9 $$ ;;
  3) echo $$ > "{pid_file}"; exec sleep 60 ;;
  5) echo "not the JSON of generate"; exit 0 ;;
  *) shift 2; exec mpirun -n 1 "$@" ;;
esac
"""


def fake_experiment(tmp_path, model, batches, timeout_s=30):
    launcher = tmp_path / "launcher.sh"
    launcher.write_text(FAKE_LAUNCHER.format(pid_file=tmp_path / "sleeper.pid"))
    launcher.chmod(0o755)
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"""
launcher: {{mpirun: {launcher}}}
timeout_s: {timeout_s}
grid: {{model: {model}, batch: {batches}, prompt_len: 4, gen_len: 2, mesh: "1,1,1"}}
""")
    return exp


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_failure_statuses(shardlm, models, tmp_path):
    exp = fake_experiment(tmp_path, models.get("tiny"), "[1, 2, 3, 5]", timeout_s=1.5)
    out = tmp_path / "out"
    start = time.monotonic()
    p = sweep(shardlm, "sweep", exp, "--out", out)
    assert time.monotonic() - start < 15
    recs = records(out)
    assert [r["status"] for r in recs] == ["failed", "oom", "timeout", "failed"], p.stderr
    assert recs[0]["error"] == "rank 0: injected failure (exit 1)"
    assert "out-of-memory killer" in recs[1]["error"]
    assert "timeout_s 1.5" in recs[2]["error"]
    assert gone(int((tmp_path / "sleeper.pid").read_text()))  # the timed-out job was ended
    assert "not its --json object" in recs[3]["error"]
    assert "2 failed, 1 timeout, 1 oom" in p.stdout, p.stdout
    for r in recs:  # each failure keeps the job's output
        assert "## stderr" in (out / r["log"]).read_text()


def test_ctrl_c_leaves_whole_lines_and_resume_finishes(shardlm, models, tmp_path):
    exp = fake_experiment(tmp_path, models.get("tiny"), "[4, 3]")
    out = tmp_path / "out"
    proc = subprocess.Popen([str(shardlm.path), "sweep", str(exp), "--out", str(out)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = tmp_path / "sleeper.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert pid_file.exists(), proc.communicate()
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    assert gone(int(pid_file.read_text()))
    recs = records(out)  # one whole, valid line: the point that finished
    assert [(r["config"]["batch"], r["status"]) for r in recs] == [(4, "ok")]
    # --resume runs only the interrupted point (here it now fails fast).
    exp.write_text(exp.read_text().replace("timeout_s: 30", "timeout_s: 0.5"))
    p = sweep(shardlm, "sweep", exp, "--out", out, "--resume")
    assert "1 to run" in p.stderr
    assert [r["status"] for r in records(out)] == ["ok", "timeout"]


def test_dry_run_prices_grid_with_rules(shardlm, tmp_path):
    exp = tmp_path / "dry.yaml"
    exp.write_text("""
hardware: tpu-v4
grid:
  model: palm-62b
  chips: {from: 16, to: 64, times: 2}
  ffn_decode: [1d, 2d]
  attn_decode: batch
  batch: [4, 64, 128]
  prompt_len: 128
  gen_len: 8
exclude:
  - {chips: 32, ffn_decode: 1d}
where:
  - "chips divides batch"
""")
    out = tmp_path / "out"
    p = sweep(shardlm, "sweep", exp, "--out", out, "--dry-run")
    recs = records(out)
    got = [(r["config"]["chips"], r["config"]["ffn_decode"], r["config"]["batch"]) for r in recs]
    assert got == [(c, f, b) for c in (16, 32, 64) for f in ("1d", "2d") for b in (64, 128)
                   if (c, f) != (32, "1d")]
    assert "10 points (8 dropped by exclude/where)" in p.stderr
    for r in recs:
        assert r["mode"] == "predicted" and r["status"] == "ok", r["error"]
        assert r["metrics"]["itl_ms"]["p99"] is None and r["metrics"]["itl_ms"]["mean"] > 0
        assert r["run"]["layouts"]["decode"] == {"ffn": r["config"]["ffn_decode"], "attn": "batch"}
    sweep(shardlm, "report", out)
    md = (out / "report.md").read_text()
    assert "*predicted*" in md
    figs = {f["name"]: f for f in json.loads((out / "figures.json").read_text())}
    assert sorted(figs) == ["cost_vs_latency", "latency_percentiles", "latency_vs_chips",
                            "mfu_vs_tokens"]
    for f in figs.values():
        png_size(out / f["png"])
        for panel in f["panels"]:
            assert "predicted" in panel["ylabel"] or "predicted" in panel["xlabel"], panel
    # Fig. 7: a curve per feedforward layout that ran (and chip count, which varies).
    for panel, phase in zip(figs["mfu_vs_tokens"]["panels"], ("prefill", "decode")):
        want = {(r["run"]["layouts"][phase]["ffn"], r["config"]["chips"]) for r in recs}
        assert len(panel["series"]) == len(want), (phase, panel["series"], want)
    # Fig. 6: a curve per decode layout and batch over the chip counts.
    assert figs["latency_vs_chips"]["panels"][0]["series"] == [
        "1d + batch, B=64", "1d + batch, B=128", "2d + batch, B=64", "2d + batch, B=128"]
    # Fig. 1: one curve per configuration (chips x decode layout), over batch.
    assert len(figs["cost_vs_latency"]["panels"][0]["series"]) == 5


@pytest.mark.parametrize("text,line,key", [
    ("grid: {model: tiny, prompt_len: 4, gen_len: 2}\nbogus: 1\n", 2, "bogus"),
    ("grid:\n  model: tiny\n  prompt_len: 4\n  gen_len: 2\n  bacth: 3\n", 5, "grid.bacth"),
    ("grid:\n  model: tiny\n  prompt_len: 4\n  gen_len: 2\n  batch: [1, two]\n", 5, "grid.batch[1]"),
    ("grid:\n  model: tiny\n  gen_len: 2\n", 2, "grid.prompt_len"),  # the grid's first line
    ("grid: {model: tiny, prompt_len: 4, gen_len: 2}\nwhere: [\"bach > 1\"]\n", 2, "where[0]"),
    ("grid: {model: tiny, prompt_len: 4, gen_len: 2, ffn_decode: 3d}\n", 1, "grid.ffn_decode"),
])
def test_experiment_errors_name_file_line_and_key(shardlm, tmp_path, text, line, key):
    exp = tmp_path / "bad.yaml"
    exp.write_text(text)
    out = tmp_path / "out"
    p = sweep(shardlm, "sweep", exp, "--out", out, "--dry-run", check=False)
    assert p.returncode == 1, p.stderr
    msg = error_line(p.stderr)
    assert f"{exp}:{line}:" in msg and key in msg, msg
    assert not out.exists()  # nothing half-written


def test_report_refuses_damaged_results(shardlm, three, tmp_path):
    _, out, _ = three
    bad = tmp_path / "bad"
    bad.mkdir()
    lines = (out / "results.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    del rec["metrics"]["e2e_ms"]
    lines[1] = json.dumps(rec)
    (bad / "results.jsonl").write_text("\n".join(lines) + "\n")
    p = sweep(shardlm, "report", bad, check=False)
    assert p.returncode == 1
    assert f"{bad / 'results.jsonl'}:2: metrics.e2e_ms" in error_line(p.stderr)
    assert not (bad / "report.md").exists()


ACTIVATIONS = """\
name: activations
hardware: cpu-local
launcher:
  args: [--oversubscribe]
repetitions: 1
grid:
  model: {model}
  mesh: "2,1,1"
  ffn: 1d
  attn: heads
  activations: [f32, bf16]
  batch: 2
  prompt_len: 6
  gen_len: 3
"""


def test_activations_are_a_grid_key(shardlm, models, tmp_path):
    """Each point runs generate --activations and is priced with its dtype:
    bf16 moves half the bytes of f32 in every activation collective."""
    exp = tmp_path / "act.yaml"
    exp.write_text(ACTIVATIONS.format(model=models.get("tiny")))
    out = tmp_path / "out"
    sweep(shardlm, "sweep", exp, "--out", out)
    f32, bf16 = records(out)
    assert (f32["status"], bf16["status"]) == ("ok", "ok")
    assert (f32["config"]["activations"], bf16["config"]["activations"]) == ("f32", "bf16")
    assert f32["provenance"]["command"][-2:] != ["--activations", "bf16"]
    assert "--activations" in bf16["provenance"]["command"]
    assert "bf16 activations" in bf16["provenance"]["blas"]

    def activation_bytes(r):
        layer = r["predicted"]["prefill"]["breakdown"]["per_layer"]
        return sum(c["bytes_per_chip"] for c in layer["collectives"] if "sumsq" not in c["tensor"])

    assert activation_bytes(bf16) == pytest.approx(activation_bytes(f32) / 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text(ACTIVATIONS.format(model=models.get("tiny")).replace("[f32, bf16]", "f16"))
    p = sweep(shardlm, "sweep", bad, "--out", tmp_path / "bad-out", check=False)
    assert p.returncode != 0
    assert "key 'grid.activations': expected f32, bf16 or auto, got 'f16'" in error_line(p.stderr)
