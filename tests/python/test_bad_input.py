"""Bad input: every case exits non-zero with the documented code (2 for usage,
1 for data), prints one `shardlm: error:` line on stderr naming the file,
tensor, field or flag, never crashes or hangs, and leaves no output file."""

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

import llama_ref
from conftest import MICRO_CONFIG, SUBPROCESS_ENV, TIMEOUT_S, ids_arg, micro_tensors, write_micro_model

IDS = [1, 5, 9, 14, 2]


@pytest.fixture
def good(tmp_path):
    """A valid checkpoint (written in Python) for each test to damage."""
    return write_micro_model(tmp_path / "model", seed=3)


def error_line(stderr: str) -> str:
    lines = [l for l in stderr.splitlines() if l.startswith("shardlm: error:")]
    assert len(lines) == 1, f"expected one 'shardlm: error:' line on stderr, got:\n{stderr}"
    for bad in ("terminate called", "Traceback", "Segmentation", "Aborted", "core dumped"):
        assert bad not in stderr, stderr
    return lines[0]


def expect_failure(shardlm, tmp_path, args, code, names=(), any_of=None, dump=True):
    """Runs `shardlm *args` (plus output-file flags when `dump`), checks the
    exit code (an int or a set), that the error line contains every string of
    `names` (and one of `any_of`), and that no output file was left."""
    outs = []
    args = [str(a) for a in args]
    if dump and args and args[0] == "generate":
        outs = [tmp_path / "out-logits.npy", tmp_path / "out-steps.npy"]
        args += ["--dump-logits", str(outs[0]), "--dump-step-logits", str(outs[1])]
    p = shardlm.run(*args, check=False)
    codes = {code} if isinstance(code, int) else set(code)
    assert p.returncode in codes, (f"exit {p.returncode}, expected {sorted(codes)}: {' '.join(args)}\n"
                                   f"stderr: {p.stderr}")
    line = error_line(p.stderr)
    print(f"exit {p.returncode}: {line}")  # shown with pytest -rA or -s
    for n in names:
        assert str(n) in line, f"error line does not name {n!r}: {line}"
    if any_of is not None:
        assert any(str(n) in line for n in any_of), f"error line names none of {any_of}: {line}"
    for o in outs:
        assert not o.exists(), f"partial output file {o} left after a failed run"
        assert not any(p.name.startswith(o.name) for p in tmp_path.iterdir()), \
            f"temporary output left in {tmp_path}: {sorted(x.name for x in tmp_path.iterdir())}"
    return line


def generate(model, ids=IDS, *extra):
    return ["generate", "--model", model, "--prompt-ids", ids_arg(ids), "--max-new-tokens", 2, *extra]


def test_good_model_runs(shardlm, good, tmp_path):
    """The undamaged checkpoint works, so the failures below are the damage."""
    out = tmp_path / "ok.npy"
    shardlm.run(*generate(good), "--dump-logits", out)
    assert out.exists()


# --- model directory and config.json -----------------------------------------

def test_missing_model_dir(shardlm, tmp_path):
    missing = tmp_path / "no-such-model"
    expect_failure(shardlm, tmp_path, generate(missing), 1, names=[missing.name])


def test_model_path_is_a_file(shardlm, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("not a model")
    expect_failure(shardlm, tmp_path, generate(f), 1, names=[f.name])


def _unprivileged_prefix(shardlm):
    """Permission checks need a user the kernel enforces them on. As root,
    drop to nobody with setpriv when that works here; otherwise skip."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is missing: root reads any file")
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run(prefix + [str(shardlm.path), "--help"], capture_output=True, timeout=TIMEOUT_S)
    if probe.returncode != 0:
        pytest.skip("cannot run shardlm as nobody here")
    return prefix


@pytest.mark.parametrize("what", ["directory", "config.json", "model.safetensors"])
def test_unreadable_model(shardlm, what):
    prefix = _unprivileged_prefix(shardlm)
    # A directory the unprivileged user can traverse (pytest's tmp dirs are 0700).
    base = Path(tempfile.mkdtemp(prefix="shardlm-perm-"))
    try:
        base.chmod(0o777)
        model = write_micro_model(base / "model", seed=3)
        for p in [model, *model.iterdir()]:
            p.chmod(0o777 if p.is_dir() else 0o666)
        target = model if what == "directory" else model / what
        target.chmod(0)
        out = base / "logits.npy"
        cmd = prefix + [str(shardlm.path), *map(str, generate(model)), "--dump-logits", str(out)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=SUBPROCESS_ENV)
        assert p.returncode == 1, f"exit {p.returncode}: {p.stderr}"
        line = error_line(p.stderr)
        print(f"exit {p.returncode}: {line}")
        assert (model.name if what == "directory" else what) in line, line
        assert not out.exists()
    finally:
        for p in [base, *base.rglob("*")]:
            p.chmod(0o777)
        shutil.rmtree(base)


def test_missing_config(shardlm, good, tmp_path):
    (good / "config.json").unlink()
    expect_failure(shardlm, tmp_path, generate(good), 1, names=["config.json"])


def test_config_not_json(shardlm, good, tmp_path):
    (good / "config.json").write_text('{"hidden_size": 32,')
    expect_failure(shardlm, tmp_path, generate(good), 1, names=["config.json"])


def rewrite_config(model, **changes):
    cfg = json.loads((model / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (model / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "vocab_size"])
def test_config_missing_key(shardlm, good, tmp_path, key):
    rewrite_config(good, **{key: None})
    expect_failure(shardlm, tmp_path, generate(good), 1, names=["config.json", key])


@pytest.mark.parametrize("key,value", [("num_hidden_layers", "four"), ("hidden_size", 32.5),
                                       ("rms_norm_eps", "small"), ("num_attention_heads", [4])])
def test_config_wrong_type(shardlm, good, tmp_path, key, value):
    rewrite_config(good, **{key: value})
    expect_failure(shardlm, tmp_path, generate(good), 1, names=["config.json", key])


@pytest.mark.parametrize("key,value", [("num_key_value_heads", 3), ("hidden_size", 0), ("vocab_size", -5)])
def test_config_inconsistent_value(shardlm, good, tmp_path, key, value):
    rewrite_config(good, **{key: value})
    expect_failure(shardlm, tmp_path, generate(good), 1, names=[key])


# --- safetensors files --------------------------------------------------------

def st_path(model):
    return model / "model.safetensors"


def test_truncated_safetensors(shardlm, good, tmp_path):
    f = st_path(good)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    expect_failure(shardlm, tmp_path, generate(good), 1, names=["model.safetensors"])


def test_safetensors_shorter_than_header_length(shardlm, good, tmp_path):
    st_path(good).write_bytes(b"\x10\x00\x00")
    expect_failure(shardlm, tmp_path, generate(good), 1, names=["model.safetensors"])


def test_header_length_past_end_of_file(shardlm, good, tmp_path):
    f = st_path(good)
    data = bytearray(f.read_bytes())
    data[:8] = struct.pack("<Q", len(data) * 4)
    f.write_bytes(bytes(data))
    expect_failure(shardlm, tmp_path, generate(good), 1, names=["model.safetensors"])


def test_header_huge_length(shardlm, good, tmp_path):
    f = st_path(good)
    data = bytearray(f.read_bytes())
    data[:8] = struct.pack("<Q", 2 ** 63 + 5)
    f.write_bytes(bytes(data))
    expect_failure(shardlm, tmp_path, generate(good), 1, names=["model.safetensors"])


def test_header_invalid_json(shardlm, good, tmp_path):
    f = st_path(good)
    data = bytearray(f.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8:8 + n] = b"{" + b"x" * (n - 1)  # same length, not JSON
    f.write_bytes(bytes(data))
    expect_failure(shardlm, tmp_path, generate(good), 1, names=["model.safetensors"])


def rewrite_header(path, edit):
    """Applies `edit(header)` and writes the file back with the same data buffer."""
    header, start = llama_ref.read_header(path)
    data = path.read_bytes()[start:]
    edit(header)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_data_offsets_past_end_of_file(shardlm, good, tmp_path):
    f = st_path(good)
    name = "model.layers.1.mlp.down_proj.weight"

    def edit(h):
        begin, end = h[name]["data_offsets"]
        total = max(e for k, v in h.items() if k != "__metadata__" for e in v["data_offsets"])
        h[name]["data_offsets"] = [total + 64, total + 64 + (end - begin)]

    rewrite_header(f, edit)
    expect_failure(shardlm, tmp_path, generate(good), 1, any_of=["model.safetensors", name])


def test_data_offsets_disagree_with_shape(shardlm, good, tmp_path):
    f = st_path(good)
    name = "model.layers.0.self_attn.k_proj.weight"

    def edit(h):
        begin, _ = h[name]["data_offsets"]
        h[name]["data_offsets"] = [begin, begin + 4]

    rewrite_header(f, edit)
    expect_failure(shardlm, tmp_path, generate(good), 1, any_of=["model.safetensors", name])


def test_tensor_missing(shardlm, tmp_path):
    name = "model.layers.1.self_attn.v_proj.weight"
    t = micro_tensors(MICRO_CONFIG, 3)
    del t[name]
    model = write_micro_model(tmp_path / "model", tensors=t)
    expect_failure(shardlm, tmp_path, generate(model), 1, names=[name])


def test_tensor_wrong_shape(shardlm, tmp_path):
    name = "model.layers.0.mlp.up_proj.weight"
    t = micro_tensors(MICRO_CONFIG, 3)
    F, E = t[name].shape  # 48, 32
    t[name] = np.zeros((F + 1, E), np.float32)
    model = write_micro_model(tmp_path / "model", tensors=t)
    line = expect_failure(shardlm, tmp_path, generate(model), 1, names=[name])
    assert re.search(rf"\b{F}\D{{1,3}}{E}\b", line), f"error line does not give the expected shape [{F}, {E}]: {line}"


@pytest.mark.parametrize("dtype", ["I64", "F64"])
def test_tensor_unsupported_dtype(shardlm, tmp_path, dtype):
    name = "model.norm.weight"
    t = micro_tensors(MICRO_CONFIG, 3)
    t[name] = t[name].astype(np.int64 if dtype == "I64" else np.float64)
    model = write_micro_model(tmp_path / "model", tensors=t)
    expect_failure(shardlm, tmp_path, generate(model), 1, names=[dtype], any_of=[name, "model.safetensors"])


def test_sharded_index_names_missing_file(shardlm, tmp_path):
    model = write_micro_model(tmp_path / "model", seed=3, shards=2)
    (model / "model-00002-of-00002.safetensors").unlink()
    expect_failure(shardlm, tmp_path, generate(model), 1, names=["model-00002-of-00002.safetensors"])


def test_sharded_index_tensor_not_in_named_file(shardlm, tmp_path):
    model = write_micro_model(tmp_path / "model", seed=3, shards=2)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    name = next(n for n, f in index["weight_map"].items() if f.startswith("model-00001"))
    index["weight_map"][name] = "model-00002-of-00002.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    expect_failure(shardlm, tmp_path, generate(model), 1, names=[name])


# --- prompts and context -----------------------------------------------------------

def test_token_id_too_large(shardlm, good, tmp_path):
    vocab = MICRO_CONFIG["vocab_size"]
    expect_failure(shardlm, tmp_path, generate(good, [1, 2, vocab, 3]), 1, names=[str(vocab)])


def test_token_id_far_too_large(shardlm, good, tmp_path):
    expect_failure(shardlm, tmp_path, generate(good, [1, 99999999999]), {1, 2}, names=["99999999999"])


def test_token_id_negative(shardlm, good, tmp_path):
    args = ["generate", "--model", good, "--prompt-ids=1,-3,4", "--max-new-tokens", 2]
    expect_failure(shardlm, tmp_path, args, {1, 2}, names=["-3"])


def test_token_id_too_large_in_prompt_file(shardlm, good, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("1,2,3\n4 5 70\n")
    args = ["generate", "--model", good, "--prompt-ids-file", f, "--max-new-tokens", 2]
    expect_failure(shardlm, tmp_path, args, 1, names=["70"])


def test_prompt_beyond_context(shardlm, good, tmp_path):
    ctx = MICRO_CONFIG["max_position_embeddings"]
    line = expect_failure(shardlm, tmp_path, generate(good, [1] * (ctx - 4), "--max-new-tokens", 8), {1, 2},
                          any_of=["context", "max_position_embeddings"])
    assert str(ctx) in line, f"error line does not give the context length {ctx}: {line}"


def test_prompt_alone_beyond_context(shardlm, good, tmp_path):
    ctx = MICRO_CONFIG["max_position_embeddings"]
    expect_failure(shardlm, tmp_path, generate(good, [1] * (ctx + 1)), {1, 2},
                   any_of=["context", "max_position_embeddings"])


def test_longest_prompt_in_file_beyond_context(shardlm, good, tmp_path):
    ctx = MICRO_CONFIG["max_position_embeddings"]
    f = tmp_path / "prompts.txt"
    f.write_text("1,2\n" + ids_arg([3] * (ctx - 2)) + "\n")
    args = ["generate", "--model", good, "--prompt-ids-file", f, "--max-new-tokens", 4]
    expect_failure(shardlm, tmp_path, args, {1, 2}, any_of=["context", "max_position_embeddings"])


def test_prompt_exactly_fills_context(shardlm, good, tmp_path):
    ctx = MICRO_CONFIG["max_position_embeddings"]
    p = shardlm.run("generate", "--model", good, "--prompt-ids", ids_arg([1] * (ctx - 4)),
                    "--max-new-tokens", 4, "--json")
    assert len(json.loads(p.stdout)["generated_ids"][0]) == 4


# --- flags ------------------------------------------------------------------------

def test_unknown_flag(shardlm, good, tmp_path):
    expect_failure(shardlm, tmp_path, generate(good, IDS, "--frobnicate", "3"), 2, names=["--frobnicate"])


def test_unknown_subcommand(shardlm, tmp_path):
    expect_failure(shardlm, tmp_path, ["frobnicate"], 2)


def test_missing_model_flag(shardlm, tmp_path):
    expect_failure(shardlm, tmp_path, ["generate", "--prompt-ids", "1,2,3"], 2, names=["--model"])


def test_missing_prompt(shardlm, good, tmp_path):
    expect_failure(shardlm, tmp_path, ["generate", "--model", good], 2, any_of=["--prompt-ids", "prompt"])


def test_both_prompt_flags(shardlm, good, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("1,2,3\n")
    args = ["generate", "--model", good, "--prompt-ids", "1,2", "--prompt-ids-file", f]
    expect_failure(shardlm, tmp_path, args, 2, any_of=["--prompt-ids", "--prompt-ids-file"])


@pytest.mark.parametrize("bad", ["1,x,3", "1,,3", "", "1.5,2"])
def test_malformed_prompt_ids(shardlm, good, tmp_path, bad):
    args = ["generate", "--model", good, f"--prompt-ids={bad}", "--max-new-tokens", 2]
    expect_failure(shardlm, tmp_path, args, 2, names=["--prompt-ids"])


def test_malformed_prompt_file(shardlm, good, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("1,2,3\n4,y,6\n")
    args = ["generate", "--model", good, "--prompt-ids-file", f, "--max-new-tokens", 2]
    expect_failure(shardlm, tmp_path, args, {1, 2}, any_of=[f.name, "--prompt-ids-file"])


def test_empty_prompt_file(shardlm, good, tmp_path):
    f = tmp_path / "empty-prompts.txt"
    f.write_text("")
    args = ["generate", "--model", good, "--prompt-ids-file", f, "--max-new-tokens", 2]
    expect_failure(shardlm, tmp_path, args, {1, 2}, any_of=[f.name, "--prompt-ids-file"])


def test_dump_path_in_missing_directory(shardlm, good, tmp_path):
    out = tmp_path / "no-such-dir" / "logits.npy"
    args = ["generate", "--model", good, "--prompt-ids", "1,2,3", "--max-new-tokens", 2, "--dump-logits", out]
    expect_failure(shardlm, tmp_path, args, {1, 2}, names=["no-such-dir"], dump=False)
    assert not out.exists()


def test_missing_prompt_file(shardlm, good, tmp_path):
    f = tmp_path / "no-such-prompts.txt"
    args = ["generate", "--model", good, "--prompt-ids-file", f, "--max-new-tokens", 2]
    expect_failure(shardlm, tmp_path, args, {1, 2}, names=[f.name])


@pytest.mark.parametrize("flag,value", [("--max-new-tokens", "-1"), ("--max-new-tokens", "many"),
                                        ("--temperature", "-0.5"), ("--temperature", "nan"),
                                        ("--top-p", "nan"), ("--batch", "0"), ("--top-k", "-2")])
def test_bad_numeric_flag(shardlm, good, tmp_path, flag, value):
    args = ["generate", "--model", good, "--prompt-ids", "1,2,3", f"{flag}={value}"]
    expect_failure(shardlm, tmp_path, args, 2, names=[flag])


def test_batch_disagrees_with_prompt_file(shardlm, good, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("1,2,3\n4,5\n6\n")
    args = ["generate", "--model", good, "--prompt-ids-file", f, "--batch", 2, "--max-new-tokens", 2]
    expect_failure(shardlm, tmp_path, args, {1, 2}, names=["--batch"])


@pytest.mark.parametrize("shards", ["0", "100000000", "x"])
def test_make_model_bad_shards(shardlm, tmp_path, shards):
    out = tmp_path / "m"
    expect_failure(shardlm, tmp_path, ["make-model", "--preset", "tiny", "--out", out, "--shards", shards], 2,
                   names=["--shards"])
    assert not out.exists() or not any(out.iterdir())


def test_make_model_missing_out(shardlm, tmp_path):
    expect_failure(shardlm, tmp_path, ["make-model", "--preset", "tiny"], 2, names=["--out"])


def test_make_model_unknown_preset(shardlm, tmp_path):
    out = tmp_path / "m"
    expect_failure(shardlm, tmp_path, ["make-model", "--preset", "no-such-preset", "--out", out], 2,
                   names=["no-such-preset"])
    assert not out.exists() or not any(out.iterdir())


def test_make_model_bad_dtype(shardlm, tmp_path):
    out = tmp_path / "m"
    expect_failure(shardlm, tmp_path, ["make-model", "--preset", "tiny", "--out", out, "--dtype", "f8"], 2,
                   names=["--dtype"])
    assert not out.exists() or not any(out.iterdir())
