"""Shared fixtures for the end-to-end tests of the `shardlm` binary.

The binary comes from $SHARDLM_BIN (default: build/shardlm under the repository
root). Models are written by the binary itself (`shardlm make-model`) into a
session-scoped temporary directory and reused by every test of the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 60  # every subprocess; a hang fails the test instead of the suite

# OpenMP threads that spin while they wait make a 2-thread run 10-40x slower
# when other work shares the 2 cores (measured: 0.3 s -> 8 s for 16 tokens of
# tiny). Waiting passively keeps the suite fast on a busy machine; it changes
# no result. An explicit setting in the environment wins.
# The reference comparisons (1e-4 of the largest logit and tighter) are stated
# for an F32 KV cache; the binary's default is bf16 (test_kv_dtype.py checks
# 16-bit caches against F32 with their own bound). Set in os.environ so that
# mpirun and every other subprocess inherit it.
os.environ.setdefault("SHARDLM_KV_DTYPE", "f32")
SUBPROCESS_ENV = dict(os.environ)
SUBPROCESS_ENV.setdefault("OMP_WAIT_POLICY", "passive")

# What mpirun needs here: run as root (containers, CI) and more ranks than cores.
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
}

# The prompt most tests use: 12 ids, all below any preset's vocabulary size.
PROMPT = [1, 5, 9, 14, 2, 27, 3, 8, 31, 6, 11, 4]


def shardlm_path() -> Path:
    p = Path(os.environ.get("SHARDLM_BIN", REPO_ROOT / "build" / "shardlm"))
    if not p.is_absolute():
        p = REPO_ROOT / p
    return p


def ids_arg(ids) -> str:
    return ",".join(str(int(i)) for i in ids)


class Shardlm:
    """Runs the binary with a timeout; `check` turns a failure into a test
    failure that shows the command and its stderr."""

    def __init__(self, path: Path):
        self.path = path

    def run(self, *args, check=True, timeout=TIMEOUT_S, cwd=None) -> subprocess.CompletedProcess:
        cmd = [str(self.path)] + [str(a) for a in args]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                               env=SUBPROCESS_ENV)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\nstderr: {e.stderr}")
        if check and p.returncode != 0:
            pytest.fail(f"exit {p.returncode}: {' '.join(cmd)}\nstdout: {p.stdout[-2000:]}\n"
                        f"stderr: {p.stderr[-2000:]}")
        return p

    def generate_json(self, model, ids=None, *extra, ids_file=None) -> dict:
        args = ["generate", "--model", model]
        if ids is not None:
            args += ["--prompt-ids", ids_arg(ids)]
        if ids_file is not None:
            args += ["--prompt-ids-file", ids_file]
        p = self.run(*args, *extra, "--json")
        return parse_single_json(p.stdout)


def parse_single_json(stdout: str) -> dict:
    """stdout must hold exactly one JSON object (surrounding whitespace allowed)."""
    text = stdout.strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise AssertionError(f"--json stdout is not exactly one JSON object ({e}):\n{stdout[:2000]}")
    assert isinstance(obj, dict), f"--json printed {type(obj).__name__}, expected an object"
    return obj


def load_npy_f32(path) -> np.ndarray:
    """Loads a .npy file after checking it is format 1.0, '<f4', C order."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        assert version == (1, 0), f"{path}: .npy format {version}, expected 1.0"
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    assert dtype == np.dtype("<f4"), f"{path}: dtype {dtype}, expected <f4"
    assert not fortran, f"{path}: Fortran order, expected C order"
    arr = np.load(path, allow_pickle=False)
    assert arr.shape == shape
    return arr


@pytest.fixture(scope="session")
def shardlm() -> Shardlm:
    p = shardlm_path()
    if not p.exists():
        pytest.fail(f"shardlm binary not found at {p} (set SHARDLM_BIN or build the target `shardlm`)")
    return Shardlm(p)


class ModelFactory:
    """`get(preset, dtype, seed, shards)` writes a model once per session."""

    def __init__(self, shardlm: Shardlm, root: Path):
        self.shardlm = shardlm
        self.root = root
        self.cache: dict = {}

    def get(self, preset="tiny", dtype="f32", seed=None, shards=None) -> Path:
        key = (preset, dtype, seed, shards)
        if key not in self.cache:
            out = self.root / "-".join(str(k) for k in key if k is not None)
            args = ["make-model", "--preset", preset, "--out", out, "--dtype", dtype]
            if seed is not None:
                args += ["--seed", seed]
            if shards is not None:
                args += ["--shards", shards]
            self.shardlm.run(*args, timeout=120)
            assert (out / "config.json").is_file(), f"make-model wrote no config.json in {out}"
            self.cache[key] = out
        return self.cache[key]


@pytest.fixture(scope="session")
def models(shardlm, tmp_path_factory) -> ModelFactory:
    return ModelFactory(shardlm, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def reference_cache():
    """Reference models are costly to build (float64 copies); share them."""
    import llama_ref

    cache: dict = {}

    def get(model_dir) -> "llama_ref.LlamaRef":
        key = str(model_dir)
        if key not in cache:
            cache[key] = llama_ref.LlamaRef.from_dir(model_dir)
        return cache[key]

    return get


# ---------------------------------------------------------------------------
# Checkpoints written in Python (not by make-model): small, fast to corrupt,
# and a check that the loader takes any Hugging Face Llama layout.
# ---------------------------------------------------------------------------

MICRO_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 12,  # differs from hidden_size / num_attention_heads = 8
    "rms_norm_eps": 1e-5,
    "rope_theta": 500.0,
    "vocab_size": 64,
    "max_position_embeddings": 32,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
}


def micro_tensors(cfg: dict, seed: int = 0) -> dict:
    import llama_ref

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in llama_ref.expected_shapes(cfg).items():
        if name.endswith("norm.weight"):
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    return out


def write_micro_model(out: Path, seed: int = 0, shards: int | None = None, dtype: str = "F32",
                      tensors: dict | None = None, **overrides) -> Path:
    """Writes a small Llama checkpoint (config overrides as keyword args; an
    override of None drops the key)."""
    import llama_ref

    cfg = {k: v for k, v in dict(MICRO_CONFIG, **overrides).items() if v is not None}
    tensors = micro_tensors(cfg, seed) if tensors is None else tensors
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    wrap = (lambda a: a) if dtype == "F32" else (lambda a: (dtype, a))
    if shards is None:
        llama_ref.write_safetensors(out / "model.safetensors", {k: wrap(v) for k, v in tensors.items()},
                                    metadata={"format": "pt"})
    else:
        names = list(tensors)
        weight_map = {}
        for k in range(shards):
            fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            part = names[k::shards]
            llama_ref.write_safetensors(out / fname, {n: wrap(tensors[n]) for n in part})
            weight_map.update({n: fname for n in part})
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=2))
    return out
