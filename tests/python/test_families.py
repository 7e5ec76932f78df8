"""Model families: Llama 3.x (llama3 RoPE scaling, tied embeddings, head_dim),
Llama with attention/MLP biases, Qwen2 (q/k/v biases, optional sliding
window), Mistral (sliding window), and the linear / dynamic NTK / yarn RoPE
variants. Each matches the NumPy reference (llama_ref.py, itself checked
against Hugging Face transformers by test_reference_hf.py) at every prompt
position, for prompts longer than the original RoPE context and the sliding
window, and greedy decoding with the KV cache equals recomputation.
Tensor-parallel runs of these presets are in test_tensor_parallel.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import llama_ref
from conftest import ids_arg, load_npy_f32

TOLERANCE = 1e-4
# 48 tokens: past the 32-token original context of the llama3 presets and the
# 16-token sliding window of tiny-mistral.
PROMPT = [(7 * i + 3) % 997 + 1 for i in range(48)]
NEW_TOKENS = 12

PRESETS = ["tiny-llama3", "tiny-tied", "tiny-llama-bias", "tiny-qwen2", "tiny-mistral"]


def variant(base: Path, out: Path, **config_changes) -> Path:
    """A copy of a model directory with config.json keys changed (the weights
    are linked, not copied)."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((base / "config.json").read_text())
    cfg.update(config_changes)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in base.iterdir():
        if f.name != "config.json" and not (out / f.name).exists():
            os.symlink(f.resolve(), out / f.name)
    return out


# Config variants of a preset: (name, preset, config changes).
VARIANTS = [
    ("linear", "tiny", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    # Dynamic NTK grows the RoPE base once a sequence passes max_position_embeddings.
    ("dynamic", "tiny", {"rope_scaling": {"type": "dynamic", "factor": 4.0}, "max_position_embeddings": 32}),
    ("yarn", "tiny", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                       "original_max_position_embeddings": 32}}),
    ("yarn-mscale", "tiny", {"rope_scaling": {"rope_type": "yarn", "factor": 8.0, "beta_fast": 16,
                                              "original_max_position_embeddings": 16, "mscale": 0.9,
                                              "mscale_all_dim": 0.6, "truncate": False}}),
    # transformers 5 writes rope_theta and the scaling together.
    ("rope-parameters", "tiny", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 50000.0,
                                                     "factor": 8.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0,
                                                     "original_max_position_embeddings": 32}}),
    # Qwen2 with its window in the last two of four layers.
    ("qwen2-window", "tiny-qwen2", {"use_sliding_window": True, "sliding_window": 12,
                                    "max_window_layers": 2}),
    ("mistral-no-window", "tiny-mistral", {"sliding_window": None}),
]


@pytest.fixture(scope="module")
def family_model(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("families")

    def get(name):
        for vname, preset, changes in VARIANTS:
            if vname == name:
                return variant(models.get(preset, "f32"), root / vname, **changes)
        return models.get(name, "f32")

    return get


def generate(shardlm, model, out_dir: Path, prompt=PROMPT, new_tokens=NEW_TOKENS):
    p = shardlm.run("generate", "--model", model, "--prompt-ids", ids_arg(prompt),
                    "--max-new-tokens", new_tokens, "--dump-logits", out_dir / "prefill.npy",
                    "--dump-step-logits", out_dir / "steps.npy", "--json")
    result = json.loads(p.stdout)
    return result, load_npy_f32(out_dir / "prefill.npy"), load_npy_f32(out_dir / "steps.npy"), p.stderr


@pytest.mark.parametrize("name", PRESETS + [v[0] for v in VARIANTS])
def test_family_matches_reference(shardlm, family_model, tmp_path, name):
    model = family_model(name)
    result, prefill, steps, stderr = generate(shardlm, model, tmp_path)
    assert "warning" not in stderr, stderr
    ref = llama_ref.LlamaRef.from_dir(model)
    # Every prompt position, in one forward pass.
    err = llama_ref.max_rel_err(prefill, ref.forward(PROMPT))
    assert err < TOLERANCE, f"{name}: prefill logits off by {err:.3g} of the largest"
    # Greedy with the KV cache against recomputation of the whole sequence.
    want_ids, want_steps = ref.greedy(PROMPT, NEW_TOKENS)
    err = llama_ref.max_rel_err(steps, want_steps)
    assert err < TOLERANCE, f"{name}: decode logits off by {err:.3g} of the largest"
    assert result["generated_ids"][0] == want_ids


def test_the_options_change_the_logits(shardlm, family_model, tmp_path):
    """Each family option matters for these prompts: a model read without it
    gives different logits (so the tests above would catch it being ignored)."""
    def logits(name, sub):
        (tmp_path / sub).mkdir()
        return generate(shardlm, family_model(name), tmp_path / sub, new_tokens=1)[1]

    base = logits("tiny-mistral", "window")
    assert llama_ref.max_rel_err(logits("mistral-no-window", "no-window"), base) > 1e-2
    tiny = logits("tiny", "tiny")
    for name in ("linear", "dynamic", "yarn"):
        assert llama_ref.max_rel_err(logits(name, name), tiny) > 1e-2, name
    # Without its biases the reference is far from the biased model.
    model = family_model("tiny-qwen2")
    ref = llama_ref.LlamaRef.from_dir(model)
    with_bias = ref.forward(PROMPT)
    ref.biases = set()
    assert llama_ref.max_rel_err(logits("tiny-qwen2", "qwen"), with_bias) < TOLERANCE
    assert llama_ref.max_rel_err(ref.forward(PROMPT), with_bias) > 1e-2


def test_ragged_batch_with_a_window(shardlm, family_model, tmp_path):
    """Sequences of different lengths in one batch each keep their own window."""
    model = family_model("qwen2-window")
    prompts = [PROMPT[:40], PROMPT[:7], PROMPT[5:30]]
    f = tmp_path / "prompts.txt"
    f.write_text("".join(ids_arg(p) + "\n" for p in prompts))
    p = shardlm.run("generate", "--model", model, "--prompt-ids-file", f, "--max-new-tokens", 6, "--json")
    got = json.loads(p.stdout)["generated_ids"]
    ref = llama_ref.LlamaRef.from_dir(model)
    assert got == [ref.greedy(pr, 6)[0] for pr in prompts]


def test_dynamic_context_is_the_scaled_one(shardlm, family_model):
    model = family_model("dynamic")  # max_position_embeddings 32, factor 4
    ok = shardlm.run("generate", "--model", model, "--prompt-ids", ids_arg(PROMPT * 2), "--max-new-tokens", 32)
    assert ok.returncode == 0
    p = shardlm.run("generate", "--model", model, "--prompt-ids", ids_arg(PROMPT * 2), "--max-new-tokens", 33,
                    check=False)
    assert p.returncode == 2 and "128" in p.stderr, p.stderr


def test_plan_prices_biases_and_tied_embeddings(shardlm, family_model):
    def params(name):
        p = shardlm.run("plan", "--model", family_model(name), "--chips", 1, "--batch", 1, "--prompt-len", 16,
                        "--gen-len", 8, "--json")
        return json.loads(p.stdout)["model"]["params"]

    ref = lambda name: llama_ref.LlamaRef.from_dir(family_model(name)).n_params()
    for name in ("tiny-llama-bias", "tiny-qwen2", "tiny-tied", "tiny"):
        assert params(name) == ref(name), name
