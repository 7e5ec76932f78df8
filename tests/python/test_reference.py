"""Self-tests of the NumPy reference (llama_ref.py); no shardlm binary needed.

The reference is the oracle for the engine, so it is checked here against
cases computed by hand (with the `math` module, not with the code under test)
and against properties any correct implementation has."""

import json
import math

import numpy as np
import pytest

import llama_ref as ref


def small_config(**over):
    c = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 16,
        "intermediate_size": 24,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": 11,
        "max_position_embeddings": 64,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    c.update(over)
    return c


def random_tensors(cfg, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in ref.expected_shapes(cfg).items():
        if name.endswith("norm.weight"):
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (rng.standard_normal(shape) / math.sqrt(shape[-1])).astype(np.float32)
    return out


# ---------------------------------------------------------------------------
# safetensors reader / writer
# ---------------------------------------------------------------------------

def test_bf16_bits():
    assert ref.f32_to_bf16_bits(np.array([1.0, -2.0, 0.0], np.float32)).tolist() == [0x3F80, 0xC000, 0]
    np.testing.assert_array_equal(ref.bf16_bits_to_f32(np.array([0x3F80, 0x4049], np.uint16)),
                                  np.array([1.0, 3.140625], np.float32))
    # round to nearest even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> 1
    assert ref.f32_to_bf16_bits(np.array([1.0 + 2.0 ** -8], np.float32)).tolist() == [0x3F80]


def test_safetensors_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 5)).astype(np.float32)
    b = rng.standard_normal((7,)).astype(np.float16)
    c = rng.standard_normal((2, 2)).astype(np.float32)
    path = tmp_path / "x.safetensors"
    ref.write_safetensors(path, {"a": a, "b": b, "c": ("BF16", c)}, metadata={"format": "pt"})
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"] == {"format": "pt"}
    assert header["c"]["dtype"] == "BF16" and header["b"]["dtype"] == "F16"
    got = ref.read_safetensors(path)
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b.astype(np.float32))
    np.testing.assert_array_equal(got["c"], ref.bf16_bits_to_f32(ref.f32_to_bf16_bits(c)))
    assert np.max(np.abs(got["c"] - c)) <= np.max(np.abs(c)) * 2 ** -8


def test_sharded_checkpoint_reads_like_single(tmp_path):
    cfg = small_config()
    t = random_tensors(cfg)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    single.mkdir()
    sharded.mkdir()
    for d in (single, sharded):
        (d / "config.json").write_text(json.dumps(cfg))
    ref.write_safetensors(single / "model.safetensors", t)
    names = sorted(t)
    parts = [names[0::2], names[1::2]]
    weight_map = {}
    for k, part in enumerate(parts):
        fname = f"model-{k + 1:05d}-of-00002.safetensors"
        ref.write_safetensors(sharded / fname, {n: t[n] for n in part})
        weight_map.update({n: fname for n in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ids = [1, 4, 2, 9]
    np.testing.assert_array_equal(ref.LlamaRef.from_dir(single).forward(ids),
                                  ref.LlamaRef.from_dir(sharded).forward(ids))
    assert len(ref.checkpoint_files(sharded)) == 2


# ---------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------

def test_rms_norm_by_hand():
    x = np.array([[3.0, 4.0]])
    got = ref.rms_norm(x, np.array([1.0, 2.0]), 0.0)
    r = math.sqrt((9 + 16) / 2)
    np.testing.assert_allclose(got, [[3 / r, 8 / r]], rtol=1e-15)


def test_rope_preserves_norm_and_is_relative():
    rng = np.random.default_rng(2)
    D = 8
    q = rng.standard_normal((1, 1, D))
    k = rng.standard_normal((1, 1, D))

    def rot(x, pos):
        cos, sin = ref.rope_cos_sin(np.array([pos]), D, 10000.0)
        return ref.apply_rope(x, cos, sin)

    for pos in (0, 1, 7, 100):
        assert np.linalg.norm(rot(q, pos)) == pytest.approx(np.linalg.norm(q), rel=1e-12)
    np.testing.assert_array_equal(rot(q, 0), q)
    # <R(m) q, R(n) k> depends on m - n only
    d1 = float(np.sum(rot(q, 5) * rot(k, 2)))
    d2 = float(np.sum(rot(q, 13) * rot(k, 10)))
    assert d1 == pytest.approx(d2, rel=1e-10)


def test_rope_rotate_half_pairs_by_hand():
    # d = 4: inv_freq = [1, 1/100] for theta = 10000; HF pairs dim j with dim j + d/2.
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    cos, sin = ref.rope_cos_sin(np.array([3]), 4, 10000.0)
    got = ref.apply_rope(x, cos, sin)[0, 0]
    a0, a1 = 3 * 1.0, 3 * 0.01
    want = [1 * math.cos(a0) - 3 * math.sin(a0),
            2 * math.cos(a1) - 4 * math.sin(a1),
            3 * math.cos(a0) + 1 * math.sin(a0),
            4 * math.cos(a1) + 2 * math.sin(a1)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_attention_rows_sum_to_one_and_are_causal():
    cfg = small_config(num_hidden_layers=1)
    m = ref.LlamaRef(cfg, random_tensors(cfg))
    n = np.random.default_rng(3).standard_normal((5, cfg["hidden_size"]))
    _, probs = m.attention(0, n, np.arange(5), return_probs=True)
    assert probs.shape == (4, 5, 5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)
    assert np.all(probs[:, np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]] == 0)
    np.testing.assert_allclose(probs[:, 0, 0], 1.0)


# ---------------------------------------------------------------------------
# closed-form model: 1 layer, E = 2, one head of dim 2, tied embeddings
# ---------------------------------------------------------------------------

def closed_form_model(parallel: bool, mlp: bool):
    cfg = small_config(hidden_size=2, intermediate_size=1, num_hidden_layers=1, num_attention_heads=1,
                       num_key_value_heads=1, vocab_size=3, rms_norm_eps=0.0, rope_theta=10000.0,
                       tie_word_embeddings=True, parallel_block=parallel)
    eye = np.eye(2)
    t = {
        "model.embed_tokens.weight": np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]),
        "model.norm.weight": np.ones(2),
        "model.layers.0.input_layernorm.weight": np.ones(2),
        "model.layers.0.self_attn.q_proj.weight": eye,
        "model.layers.0.self_attn.k_proj.weight": eye,
        "model.layers.0.self_attn.v_proj.weight": eye,
        "model.layers.0.self_attn.o_proj.weight": eye,
        "model.layers.0.mlp.gate_proj.weight": np.array([[1.0, 0.0]]),
        "model.layers.0.mlp.up_proj.weight": np.array([[0.0, 1.0]]),
        "model.layers.0.mlp.down_proj.weight": np.array([[1.0], [1.0]]) if mlp else np.zeros((2, 1)),
    }
    if not parallel:
        t["model.layers.0.post_attention_layernorm.weight"] = np.ones(2)
    return ref.LlamaRef(cfg, t)


def _norm(v):
    r = math.sqrt((v[0] ** 2 + v[1] ** 2) / 2)
    return [v[0] / r, v[1] / r]


def _logits(h):
    hn = _norm(h)  # final norm, weight 1; tied head: rows of the embedding
    return [hn[0] * 1.0, hn[1] * 2.0, hn[0] * 3.0 + hn[1] * 4.0]


def _silu(z):
    return z / (1 + math.exp(-z))


def _ffn(n):
    s = _silu(n[0]) * n[1]  # gate picks n[0], up picks n[1], down copies to both dims
    return [s, s]


def _closed_form_hidden(parallel, mlp):
    s2 = math.sqrt(2)
    x0, x1 = [1.0, 0.0], [0.0, 2.0]
    n0, n1 = _norm(x0), _norm(x1)  # [sqrt2, 0], [0, sqrt2]
    # RoPE, d = 2: inv_freq = [1]; position p rotates (a, b) -> (a cos p - b sin p, b cos p + a sin p)
    k0 = n0
    q1 = k1 = [-s2 * math.sin(1), s2 * math.cos(1)]
    s10 = (q1[0] * k0[0] + q1[1] * k0[1]) / s2
    s11 = (q1[0] * k1[0] + q1[1] * k1[1]) / s2
    a0 = math.exp(s10) / (math.exp(s10) + math.exp(s11))
    a1 = 1 - a0
    attn0 = n0  # position 0 attends only to itself: v0 = n0
    attn1 = [a0 * n0[0] + a1 * n1[0], a0 * n0[1] + a1 * n1[1]]
    hs = []
    for x, n, att in ((x0, n0, attn0), (x1, n1, attn1)):
        h = [x[0] + att[0], x[1] + att[1]]
        if mlp:
            f = _ffn(n) if parallel else _ffn(_norm(h))
            h = [h[0] + f[0], h[1] + f[1]]
        hs.append(h)
    return hs


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("mlp", [False, True])
def test_closed_form_one_layer(parallel, mlp):
    m = closed_form_model(parallel, mlp)
    got = m.forward([0, 1])
    want = [_logits(h) for h in _closed_form_hidden(parallel, mlp)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    if not mlp:
        s2 = math.sqrt(2)
        np.testing.assert_allclose(got[0], [s2, 0.0, 3 * s2], rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------
# model-level properties
# ---------------------------------------------------------------------------

def test_gqa_equals_mha_with_repeated_kv_heads():
    cfg = small_config(num_attention_heads=4, num_key_value_heads=2)
    t = random_tensors(cfg, seed=4)
    mha_cfg = dict(cfg, num_key_value_heads=4)
    mt = dict(t)
    D = cfg["hidden_size"] // cfg["num_attention_heads"]
    for i in range(cfg["num_hidden_layers"]):
        for w in ("k_proj", "v_proj"):
            name = f"model.layers.{i}.self_attn.{w}.weight"
            heads = t[name].reshape(2, D, -1)
            mt[name] = np.repeat(heads, 2, axis=0).reshape(4 * D, -1)  # kv head h//2 for query head h
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    np.testing.assert_allclose(ref.LlamaRef(cfg, t).forward(ids), ref.LlamaRef(mha_cfg, mt).forward(ids),
                               rtol=1e-12, atol=1e-12)


def test_mqa_and_custom_head_dim_shapes():
    cfg = small_config(num_attention_heads=4, num_key_value_heads=1, head_dim=6)
    m = ref.LlamaRef(cfg, random_tensors(cfg, seed=5))
    assert m.t["model.layers.0.self_attn.q_proj.weight"].shape == (24, 16)
    assert m.t["model.layers.0.self_attn.o_proj.weight"].shape == (16, 24)
    assert m.forward([1, 2, 3]).shape == (3, cfg["vocab_size"])


@pytest.mark.parametrize("over", [{}, {"parallel_block": True}, {"tie_word_embeddings": True},
                                  {"num_key_value_heads": 1, "head_dim": 8}])
def test_prefix_logits_are_causal(over):
    """Logits at position t depend only on ids[:t+1] (what a KV cache relies on)."""
    cfg = small_config(**over)
    m = ref.LlamaRef(cfg, random_tensors(cfg, seed=6))
    ids = [5, 3, 8, 0, 10, 7, 2]
    full = m.forward(ids)
    for t in range(len(ids)):
        np.testing.assert_allclose(full[t], m.forward(ids[:t + 1])[-1], rtol=1e-12, atol=1e-12)
    gen, rows = m.greedy(ids[:3], 4)
    assert len(gen) == 4 and rows.shape == (4, cfg["vocab_size"])
    assert gen[0] == int(np.argmax(full[2]))


def test_missing_and_misshaped_tensors_are_rejected():
    cfg = small_config()
    t = random_tensors(cfg)
    bad = dict(t)
    del bad["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(KeyError, match="up_proj"):
        ref.LlamaRef(cfg, bad)
    bad = dict(t)
    bad["model.norm.weight"] = np.ones(3)
    with pytest.raises(ValueError, match="model.norm.weight"):
        ref.LlamaRef(cfg, bad)
