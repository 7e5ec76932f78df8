"""Outputs whole or absent, memory checked before it is spent, one clear line.

Every failure here must exit with the documented code (2 usage, 1 data), print
exactly one `shardlm: error:` line naming the flag or file, and leave nothing
behind: neither the output nor a temporary (`NAME.partial-PID`) beside it.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import MPI_ENV, PROMPT, SUBPROCESS_ENV, TIMEOUT_S, ids_arg, load_npy_f32


def error_line(p) -> str:
    lines = [l for l in p.stderr.splitlines() if l.startswith("shardlm: error:")]
    assert len(lines) == 1, f"expected one 'shardlm: error:' line, got:\n{p.stderr}"
    for bad in ("terminate called", "what():", "Segmentation", "Aborted", "core dumped"):
        assert bad not in p.stderr, p.stderr
    return lines[0]


def listing(*dirs):
    """Every path under `dirs` (recursively), to compare before and after."""
    out = set()
    for d in dirs:
        d = Path(d)
        if d.exists():
            out |= {str(p) for p in d.rglob("*")}
    return out


def expect_error(shardlm, args, code, names, watch):
    """Runs shardlm `args`; checks the exit code, the one line naming each of
    `names`, and that nothing appeared under the directories in `watch`."""
    before = listing(*watch)
    p = shardlm.run(*args, check=False)
    assert p.returncode == code, f"exit {p.returncode}, expected {code}: {args}\n{p.stderr}"
    line = error_line(p)
    for n in names:
        assert str(n) in line, f"error line does not name {n!r}: {line}"
    left = listing(*watch) - before
    assert not left, f"left behind: {sorted(left)}"
    return line


def generate(model, *extra):
    return ["generate", "--model", model, "--prompt-ids", ids_arg(PROMPT), "--max-new-tokens", 2, *extra]


@pytest.fixture(scope="module")
def tiny(models):
    return models.get("tiny", "bf16")


# --- outputs: a directory, a missing directory --------------------------------------------------

@pytest.mark.parametrize("flag", ["--dump-logits", "--dump-step-logits"])
def test_output_that_is_a_directory(shardlm, tiny, tmp_path, flag):
    out = tmp_path / "out"
    out.mkdir()
    expect_error(shardlm, generate(tiny, flag, out), 2, [flag, str(out), "is a directory"], [tmp_path])


@pytest.mark.parametrize("flag", ["--dump-logits", "--dump-step-logits"])
def test_output_in_a_missing_directory(shardlm, tiny, tmp_path, flag):
    out = tmp_path / "missing" / "logits.npy"
    expect_error(shardlm, generate(tiny, flag, out), 2, [flag, "does not exist"], [tmp_path])


def test_calibrate_output_checked_before_measuring(shardlm, tmp_path):
    (tmp_path / "spec").mkdir()
    start = time.monotonic()
    expect_error(shardlm, ["calibrate", "--quick", "--out", tmp_path / "spec"], 2, ["--out", "is a directory"],
                 [tmp_path])
    expect_error(shardlm, ["calibrate", "--quick", "--out", tmp_path / "no" / "x.yaml"], 2,
                 ["--out", "does not exist"], [tmp_path])
    assert time.monotonic() - start < 10, "the path is refused before any measurement"


def test_make_model_over_a_file_or_a_foreign_directory(shardlm, tmp_path):
    f = tmp_path / "file"
    f.write_text("not a model")
    expect_error(shardlm, ["make-model", "--preset", "tiny", "--out", f], 2, ["--out", "not a directory"], [tmp_path])
    assert f.read_text() == "not a model"
    d = tmp_path / "notes"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    expect_error(shardlm, ["make-model", "--preset", "tiny", "--out", d], 2, ["--out", "notes.txt"], [tmp_path])
    assert (d / "notes.txt").read_text() == "mine" and len(list(d.iterdir())) == 1


def test_make_model_replaces_an_earlier_model_whole(shardlm, tmp_path):
    """A 3-file model replaced by a 1-file one: no stale shard or index survives."""
    out = tmp_path / "m"
    shardlm.run("make-model", "--preset", "tiny", "--out", out, "--shards", 3, timeout=120)
    assert (out / "model.safetensors.index.json").is_file()
    shardlm.run("make-model", "--preset", "tiny", "--out", out, "--seed", 5, timeout=120)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# --- a full disk ---------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs; skipped where mounting is not permitted (CI runs as root)."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip() or p.returncode}); CI runs as root")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_logits(shardlm, tiny, small_disk):
    # 12 prompt positions x 32000 logits x 4 bytes = 1.5 MB, on a 1 MiB disk.
    out = small_disk / "logits.npy"
    line = expect_error(shardlm, generate(tiny, "--dump-logits", out), 1, [str(out), "No space left"],
                        [small_disk])
    assert not list(small_disk.iterdir()), line


def test_full_disk_model(shardlm, small_disk):
    out = small_disk / "model"
    expect_error(shardlm, ["make-model", "--preset", "tiny", "--out", out], 1, ["No space left"], [small_disk])
    assert not list(small_disk.iterdir())


# --- interrupted mid-write ------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_write_leaves_nothing(shardlm, tmp_path, sig):
    """The signal lands while a weight file is being written into the model's
    temporary directory; neither the model nor any temporary remains."""
    out = tmp_path / "model"
    proc = subprocess.Popen([str(shardlm.path), "make-model", "--preset", "small", "--out", str(out),
                             "--shards", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=SUBPROCESS_ENV)
    deadline = time.monotonic() + TIMEOUT_S
    writing = None
    while writing is None and proc.poll() is None and time.monotonic() < deadline:
        writing = next((f for d in tmp_path.glob("model.partial-*") for f in d.glob("*.partial-*")), None)
        time.sleep(0.002)
    if writing is None:
        proc.kill()
        proc.wait()
        pytest.fail(f"never saw a file being written (exit {proc.returncode})")
    proc.send_signal(sig)
    proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == -sig, f"exit {proc.returncode}, expected death by signal {sig}"
    assert not list(tmp_path.iterdir()), f"left behind: {sorted(listing(tmp_path))}"


# --- sized by the run, not the config --------------------------------------------------------------

def test_huge_trained_context_is_not_allocated(shardlm, tiny, tmp_path):
    """max_position_embeddings 10^9 changes nothing for a short run (default
    RoPE does not depend on it): same logits, no table of 10^9 rows."""
    huge = tmp_path / "huge"
    shutil.copytree(tiny, huge)
    config = json.loads((huge / "config.json").read_text())
    config["max_position_embeddings"] = 10**9
    (huge / "config.json").write_text(json.dumps(config))
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    shardlm.run(*generate(tiny, "--dump-logits", a))
    p = shardlm.run(*generate(huge, "--dump-logits", b, "--json"))
    assert np.array_equal(load_npy_f32(a), load_npy_f32(b))
    peak_mb = json.loads(p.stdout)["peak_rss_mb_per_rank"][0]
    assert peak_mb < 1024, f"peak RSS {peak_mb} MiB: something was sized by the trained context"


@pytest.mark.parametrize("where", ["vocab", "added_tokens"])
def test_tokenizer_id_far_beyond_its_tokens(shardlm, tiny, tmp_path, where):
    """Id tables are sized by the tokens a file holds, not by an id it claims."""
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    t = json.loads((model / "tokenizer.json").read_text())
    if where == "vocab":
        t["model"]["vocab"]["far"] = 2_000_000_000
        name = 'model.vocab["far"]'
    else:
        t["added_tokens"].append({"id": 2_000_000_000, "content": "<far>", "special": True})
        name = f"added_tokens[{len(t['added_tokens']) - 1}].id"
    (model / "tokenizer.json").write_text(json.dumps(t))
    expect_error(shardlm, ["tokenize", "--model", model, "hello"], 1, [name, "2000000000"], [tmp_path])


@pytest.mark.parametrize("ids", ["", " "])
def test_empty_prompt_ids_names_its_flag(shardlm, tiny, tmp_path, ids):
    line = expect_error(shardlm, ["generate", "--model", tiny, "--prompt-ids", ids], 2, ["--prompt-ids:"],
                        [tmp_path])
    assert "--prompt-ids-file" not in line


def test_empty_output_path_is_refused(shardlm, tiny, tmp_path):
    """An empty --dump-logits would otherwise read as the flag not given."""
    expect_error(shardlm, generate(tiny, "--dump-logits", ""), 2, ["--dump-logits: empty value"], [tmp_path])


# --- memory before it is spent ---------------------------------------------------------------------

def test_memory_limit_refuses_before_loading_and_its_advice_works(shardlm, tiny, tmp_path):
    """tiny in bf16 holds ~37 MiB of weights per rank; 30 MiB refuses it, with
    the numbers and --weights int8, and int8 weights then run in that limit."""
    out = tmp_path / "logits.npy"
    line = expect_error(shardlm, generate(tiny, "--memory-limit", "30MiB", "--dump-logits", out), 1,
                        ["not enough memory", "--memory-limit 30.0 MiB", "weights 36.", "--weights int8"],
                        [tmp_path])
    p = shardlm.run(*generate(tiny, "--memory-limit", "30MiB", "--weights", "int8", "--json"))
    assert json.loads(p.stdout)["generated_ids"]
    # Far too little for any fix but more ranks.
    line = expect_error(shardlm, generate(tiny, "--memory-limit", "4MiB"), 1, ["mpirun -n"], [tmp_path])
    assert "--weights int8" not in line
    # The KV cache of a long, wide run counts too: a smaller batch is advised.
    expect_error(shardlm, generate(tiny, "--memory-limit", "100MiB", "--batch", 256, "--max-new-tokens", 256), 1,
                 ["KV cache", "--batch"], [tmp_path])
    expect_error(shardlm, generate(tiny, "--memory-limit", "lots"), 2, ["--memory-limit lots"], [tmp_path])


# --- under mpirun: said once --------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("mpirun") is None, reason="no mpirun")
@pytest.mark.parametrize("extra, names", [
    (["--memory-limit", "4MiB"], ["not enough memory"]),
    (["--dump-logits", "/"], ["--dump-logits"]),
    (["--weights", "int4"], ["--weights int4"]),
    (["--prompt-ids", "1,999999"], ["token id 999999"]),
    (["--max-new-tokens", "100000"], ["--max-new-tokens 100000", "context length"]),
])
def test_pre_load_error_said_once_under_mpirun(shardlm, tiny, extra, names):
    cmd = ["mpirun", "-n", "2", str(shardlm.path), *[str(a) for a in generate(tiny, *extra)]]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S,
                       env=dict(SUBPROCESS_ENV, **MPI_ENV))
    assert p.returncode != 0, p.stderr
    line = error_line(p)
    for n in names:
        assert n in line, line
