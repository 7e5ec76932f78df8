"""Logits of `shardlm generate` against the independent NumPy reference.

Criterion (issue 2): max |engine - reference| <= 1e-4 * max |reference|, in
f32, at every prompt position, for the GQA, MHA, MQA and parallel-block
presets; a sharded checkpoint gives the same logits as a single file; and
decoding with the KV cache gives the logits of a full recomputation."""

import json

import numpy as np
import pytest

import llama_ref
from conftest import PROMPT, ids_arg, load_npy_f32

REL_TOL = 1e-4

# preset -> (num_attention_heads, num_key_value_heads, parallel_block)
PRESETS = {
    "tiny": (8, 4, False),
    "tiny-mha": (8, 8, False),
    "tiny-mqa": (8, 1, False),
    "tiny-parallel": (None, 2, True),
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_prefill_logits_match_reference(preset, shardlm, models, reference_cache, tmp_path):
    model = models.get(preset, "f32")
    cfg = json.loads((model / "config.json").read_text())
    heads, kv_heads, parallel = PRESETS[preset]
    if heads is not None:
        assert cfg["num_attention_heads"] == heads
    assert cfg["num_key_value_heads"] == kv_heads
    assert bool(cfg.get("parallel_block", False)) == parallel
    shapes = llama_ref.tensor_shapes(model)
    assert all(dt == "F32" for dt, _ in shapes.values()), "--dtype f32 must write F32 tensors"
    if parallel:
        assert not any("post_attention_layernorm" in n for n in shapes)

    out = tmp_path / "logits.npy"
    shardlm.run("generate", "--model", model, "--prompt-ids", ids_arg(PROMPT),
                "--max-new-tokens", 1, "--dump-logits", out)
    got = load_npy_f32(out)
    want = reference_cache(model).forward(PROMPT)
    assert got.shape == (len(PROMPT), cfg["vocab_size"])
    assert np.all(np.isfinite(got))
    err = llama_ref.max_rel_err(got, want)
    per_pos = np.max(np.abs(got - want), axis=1) / np.max(np.abs(want))
    assert err <= REL_TOL, f"{preset}: max rel err {err:.3g}; per position {np.round(per_pos, 8).tolist()}"
    # Random logits must not be degenerate, or the comparison would prove little.
    assert np.max(np.abs(want)) > 1e-3 and np.std(want) > 1e-4


def test_sharded_checkpoint_matches_single_file(shardlm, models, tmp_path):
    single = models.get("tiny", "f32")
    sharded = models.get("tiny", "f32", shards=3)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-{k:05d}-of-00003.safetensors" for k in (1, 2, 3)]
    assert not (sharded / "model.safetensors").exists()
    # Same values in both layouts (the reader of the reference agrees).
    a, b = llama_ref.load_tensors(single), llama_ref.load_tensors(sharded)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)

    outs = []
    for model, name in ((single, "single.npy"), (sharded, "sharded.npy")):
        shardlm.run("generate", "--model", model, "--prompt-ids", ids_arg(PROMPT),
                    "--max-new-tokens", 1, "--dump-logits", tmp_path / name)
        outs.append(load_npy_f32(tmp_path / name))
    assert outs[0].shape == outs[1].shape
    assert llama_ref.max_rel_err(outs[1], outs[0]) <= 1e-6


@pytest.mark.parametrize("preset", ["tiny", "tiny-parallel"])
def test_kv_cache_step_logits_match_recomputation(preset, shardlm, models, reference_cache, tmp_path):
    model = models.get(preset, "f32")
    ref = reference_cache(model)
    prompt = PROMPT[:6]
    n_new = 8
    out = tmp_path / "steps.npy"
    p = shardlm.run("generate", "--model", model, "--prompt-ids", ids_arg(prompt),
                    "--max-new-tokens", n_new, "--temperature", 0, "--dump-step-logits", out, "--json")
    gen = json.loads(p.stdout)["generated_ids"][0]
    steps = load_npy_f32(out)
    assert len(gen) == n_new
    assert steps.shape == (n_new, ref.V)
    seq = list(prompt)
    for i, tok in enumerate(gen):
        want = ref.forward(seq)[-1]
        err = llama_ref.max_rel_err(steps[i], want)
        assert err <= REL_TOL, f"{preset}: step {i} (sequence length {len(seq)}): max rel err {err:.3g}"
        # Greedy picks the reference's argmax (up to a near-tie within tolerance).
        best = int(np.argmax(want))
        assert tok == best or want[tok] >= want[best] - REL_TOL * np.max(np.abs(want)), \
            f"{preset}: step {i}: engine chose {tok}, reference argmax {best}"
        seq.append(tok)
    # Row 0 is the last prompt position of the prefill.
    dump = tmp_path / "prefill.npy"
    shardlm.run("generate", "--model", model, "--prompt-ids", ids_arg(prompt),
                "--max-new-tokens", 1, "--dump-logits", dump)
    prefill = load_npy_f32(dump)
    assert llama_ref.max_rel_err(steps[0], prefill[-1]) <= 1e-6


# Checkpoints written here rather than by make-model: head_dim != hidden/heads,
# tied embeddings, a non-default rope_theta, extra config keys, sharding with
# another split, and a parallel-block variant with an untied lm_head.
MICRO_CASES = {
    "gqa-headdim-tied": dict(),
    "sharded": dict(shards=2),
    "parallel-untied": dict(parallel_block=True, tie_word_embeddings=False, num_key_value_heads=1),
    "mha-no-head-dim": dict(head_dim=None, num_key_value_heads=4, rope_theta=10000.0),
}


@pytest.mark.parametrize("case", list(MICRO_CASES))
def test_python_written_checkpoint_logits(case, shardlm, tmp_path):
    from conftest import write_micro_model

    model = write_micro_model(tmp_path / "m", seed=11, **MICRO_CASES[case])
    ids = [1, 7, 3, 60, 22, 5, 9, 41, 0, 63]
    out = tmp_path / "logits.npy"
    p = shardlm.run("generate", "--model", model, "--prompt-ids", ids_arg(ids),
                    "--max-new-tokens", 1, "--dump-logits", out, "--json")
    got = load_npy_f32(out)
    ref = llama_ref.LlamaRef.from_dir(model)
    want = ref.forward(ids)
    err = llama_ref.max_rel_err(got, want)
    assert err <= REL_TOL, f"{case}: max rel err {err:.3g}"
    assert json.loads(p.stdout)["n_params"] == ref.n_params()


def test_checkpoint_with_extra_tensors_and_unaligned_data(shardlm, tmp_path):
    """Tensors the model does not use (old HF checkpoints carry rotary
    inv_freq buffers) are ignored, and a data buffer at an odd file offset
    (no alignment is promised by the format) reads correctly."""
    from conftest import MICRO_CONFIG, micro_tensors

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(MICRO_CONFIG))
    t = micro_tensors(MICRO_CONFIG, 13)
    ref = llama_ref.LlamaRef(MICRO_CONFIG, t)
    extra = dict(t)
    for i in range(MICRO_CONFIG["num_hidden_layers"]):
        extra[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = np.ones(6, np.float32)
    llama_ref.write_safetensors(model / "model.safetensors", extra, align=False)
    header, start = llama_ref.read_header(model / "model.safetensors")
    assert start % 2 == 1
    ids = [2, 4, 8, 16, 32]
    out = tmp_path / "logits.npy"
    shardlm.run("generate", "--model", model, "--prompt-ids", ids_arg(ids), "--max-new-tokens", 1,
                "--dump-logits", out)
    assert llama_ref.max_rel_err(load_npy_f32(out), ref.forward(ids)) <= REL_TOL


@pytest.mark.parametrize("dtype,torch_dtype", [("BF16", "bfloat16"), ("F16", "float16")])
def test_python_written_half_checkpoint_logits(dtype, torch_dtype, shardlm, tmp_path):
    """BF16 / F16 bits are decoded right: logits near the reference's (which
    reads the same half-precision values exactly); loose bound since the engine
    may compute in reduced precision for half-precision weights."""
    from conftest import write_micro_model

    model = write_micro_model(tmp_path / "m", seed=12, dtype=dtype, torch_dtype=torch_dtype)
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    out = tmp_path / "logits.npy"
    shardlm.run("generate", "--model", model, "--prompt-ids", ids_arg(ids),
                "--max-new-tokens", 1, "--dump-logits", out)
    err = llama_ref.max_rel_err(load_npy_f32(out), llama_ref.LlamaRef.from_dir(model).forward(ids))
    assert err <= 2e-2, f"{dtype}: max rel err {err:.3g}"


def test_kv_cache_long_prompt_mqa(shardlm, models, reference_cache, tmp_path):
    """A longer prompt (more cache rows than a kernel tile) on the MQA preset."""
    model = models.get("tiny-mqa", "f32")
    ref = reference_cache(model)
    prompt = [(7 * i + 3) % 997 for i in range(45)]
    out = tmp_path / "steps.npy"
    p = shardlm.run("generate", "--model", model, "--prompt-ids", ids_arg(prompt),
                    "--max-new-tokens", 4, "--temperature", 0, "--dump-step-logits", out, "--json")
    gen = json.loads(p.stdout)["generated_ids"][0]
    steps = load_npy_f32(out)
    assert steps.shape == (4, ref.V)
    full = ref.forward(prompt + gen[:-1])
    for i in range(4):
        err = llama_ref.max_rel_err(steps[i], full[len(prompt) - 1 + i])
        assert err <= REL_TOL, f"step {i}: max rel err {err:.3g}"


@pytest.mark.parametrize("order", ["short-first", "long-first"])
def test_batched_prompts_of_different_lengths_logits(order, shardlm, models, reference_cache, tmp_path):
    """Sequence 0 of a batch whose prompts differ in length (so any padding or
    per-sequence positions must be right) still gets the reference logits, in
    prefill and in every decode step."""
    model = models.get("tiny", "f32")
    ref = reference_cache(model)
    short, long_ = PROMPT[:3], PROMPT[:] + [17, 19]
    prompts = [short, long_, PROMPT[4:9]] if order == "short-first" else [long_, short, PROMPT[4:9]]
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(ids_arg(p) for p in prompts) + "\n")
    dump, steps_path = tmp_path / "prefill.npy", tmp_path / "steps.npy"
    p = shardlm.run("generate", "--model", model, "--prompt-ids-file", f, "--max-new-tokens", 5,
                    "--temperature", 0, "--dump-logits", dump, "--dump-step-logits", steps_path, "--json")
    gen = json.loads(p.stdout)["generated_ids"]
    first = prompts[0]
    prefill = load_npy_f32(dump)
    assert prefill.shape == (len(first), ref.V)
    assert llama_ref.max_rel_err(prefill, ref.forward(first)) <= REL_TOL
    steps = load_npy_f32(steps_path)
    assert steps.shape == (5, ref.V)
    full = ref.forward(first + gen[0][:-1])
    for i in range(5):
        err = llama_ref.max_rel_err(steps[i], full[len(first) - 1 + i])
        assert err <= REL_TOL, f"{order}: step {i}: max rel err {err:.3g}"


def test_full_context_window(shardlm, models, reference_cache, tmp_path):
    """Prompt + new tokens fill max_position_embeddings exactly: RoPE at the
    far positions and a cache filled to capacity still match the reference."""
    model = models.get("tiny", "f32")
    ref = reference_cache(model)
    ctx = json.loads((model / "config.json").read_text())["max_position_embeddings"]
    n_new = 4
    prompt = [(i * 37 + 11) % ref.V for i in range(ctx - n_new)]
    dump, steps_path = tmp_path / "prefill.npy", tmp_path / "steps.npy"
    p = shardlm.run("generate", "--model", model, "--prompt-ids", ids_arg(prompt), "--max-new-tokens", n_new,
                    "--temperature", 0, "--dump-logits", dump, "--dump-step-logits", steps_path, "--json",
                    timeout=120)
    gen = json.loads(p.stdout)["generated_ids"][0]
    assert len(gen) == n_new
    seq = prompt + gen[:-1]
    h = ref.hidden_states(seq)  # [ctx - 1, E]
    head = ref.t["model.embed_tokens.weight"] if ref.tied else ref.t["lm_head.weight"]
    prefill = load_npy_f32(dump)
    assert prefill.shape == (len(prompt), ref.V)
    rows = list(range(0, len(prompt), 211)) + [len(prompt) - 1]
    err = llama_ref.max_rel_err(prefill[rows], h[rows] @ head.T)
    assert err <= REL_TOL, f"prefill at positions {rows}: max rel err {err:.3g}"
    steps = load_npy_f32(steps_path)
    want = h[len(prompt) - 1:] @ head.T
    err = llama_ref.max_rel_err(steps, want)
    assert err <= REL_TOL, f"decode steps up to position {ctx - 2}: max rel err {err:.3g}"
