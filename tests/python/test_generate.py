"""`shardlm generate` behaviour: JSON report, batching, prompt files, sampling
flags, stop ids, BF16/F16 checkpoints; and `make-model` determinism."""

import filecmp
import json
import math
import shutil

import numpy as np
import pytest

import llama_ref
from conftest import PROMPT, ids_arg, load_npy_f32

N_NEW = 16


def gen_ids(shardlm, model, ids, *extra, n=N_NEW):
    out = shardlm.generate_json(model, ids, "--max-new-tokens", n, *extra)
    return out["generated_ids"]


def test_json_report(shardlm, models):
    model = models.get("tiny", "f32")
    out = shardlm.generate_json(model, PROMPT, "--max-new-tokens", 5, "--temperature", 0)
    for key in ("generated_ids", "ttft_ms", "itl_ms", "prefill_tokens_per_s", "decode_tokens_per_s", "n_params"):
        assert key in out, f"--json output lacks {key}: {sorted(out)}"
    gen = out["generated_ids"]
    assert isinstance(gen, list) and len(gen) == 1 and isinstance(gen[0], list)
    assert len(gen[0]) == 5
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    assert all(isinstance(t, int) and 0 <= t < vocab for t in gen[0])
    for key in ("ttft_ms", "itl_ms", "prefill_tokens_per_s", "decode_tokens_per_s"):
        v = out[key]
        assert isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, f"{key} = {v!r}"
    assert out["ttft_ms"] > 0 and out["prefill_tokens_per_s"] > 0 and out["decode_tokens_per_s"] > 0
    # n_params is the number of weights in the checkpoint.
    shapes = llama_ref.tensor_shapes(model)
    assert out["n_params"] == sum(math.prod(s) for _, s in shapes.values())
    # tiny is "about 20M parameters".
    assert 5e6 <= out["n_params"] <= 60e6


def test_greedy_matches_reference(shardlm, models, reference_cache):
    """Each greedy token is the argmax of the reference logits over the
    sequence so far (a near-tie within the logits tolerance is allowed)."""
    model = models.get("tiny", "f32")
    prompt = PROMPT[:5]
    gen = gen_ids(shardlm, model, prompt, "--temperature", 0, n=8)[0]
    assert len(gen) == 8
    rows = _reference_rows(reference_cache, model, prompt, gen)
    for i, (tok, row) in enumerate(zip(gen, rows)):
        best = int(np.argmax(row))
        assert tok == best or row[tok] >= row[best] - 1e-4 * np.max(np.abs(row)), \
            f"step {i}: engine chose {tok}, reference argmax {best}"


def test_batch_of_one_prompt_repeats_greedy(shardlm, models):
    model = models.get("tiny", "f32")
    one = gen_ids(shardlm, model, PROMPT, "--temperature", 0)
    three = gen_ids(shardlm, model, PROMPT, "--temperature", 0, "--batch", 3)
    assert len(one) == 1 and len(three) == 3
    assert all(seq == one[0] for seq in three), f"batch 3: {three}\nbatch 1: {one}"


def test_prompt_file_matches_prompts_run_alone(shardlm, models, tmp_path):
    model = models.get("tiny", "f32")
    prompts = [PROMPT[:7], PROMPT[3:5], PROMPT[:12], [42]]
    f = tmp_path / "prompts.txt"
    # Mixed separators: commas, spaces, comma + space; a trailing newline.
    lines = [",".join(map(str, prompts[0])), " ".join(map(str, prompts[1])),
             ", ".join(map(str, prompts[2])), str(prompts[3][0])]
    f.write_text("\n".join(lines) + "\n")
    dump = tmp_path / "first.npy"
    out = shardlm.generate_json(model, None, "--max-new-tokens", 8, "--temperature", 0,
                                "--dump-logits", dump, ids_file=f)
    batched = out["generated_ids"]
    assert len(batched) == len(prompts)
    alone = [gen_ids(shardlm, model, p, "--temperature", 0, n=8)[0] for p in prompts]
    assert batched == alone
    # --dump-logits covers the first sequence's prompt.
    logits = load_npy_f32(dump)
    assert logits.shape[0] == len(prompts[0])
    alone_dump = tmp_path / "alone.npy"
    shardlm.run("generate", "--model", model, "--prompt-ids", ids_arg(prompts[0]),
                "--max-new-tokens", 1, "--dump-logits", alone_dump)
    assert llama_ref.max_rel_err(logits, load_npy_f32(alone_dump)) <= 1e-5


def test_prompt_file_whitespace(shardlm, models, tmp_path):
    """CRLF line ends, tabs, blank lines and a missing final newline."""
    model = models.get("tiny", "f32")
    f = tmp_path / "prompts.txt"
    f.write_bytes(b"1,5,9\r\n\n4\t5 ,6\r\n\n7")
    got = shardlm.generate_json(model, None, "--max-new-tokens", 3, "--temperature", 0,
                                ids_file=f)["generated_ids"]
    want = [gen_ids(shardlm, model, p, "--temperature", 0, n=3)[0] for p in ([1, 5, 9], [4, 5, 6], [7])]
    assert got == want


def test_top_k_1_equals_greedy(shardlm, models):
    model = models.get("tiny", "f32")
    greedy = gen_ids(shardlm, model, PROMPT, "--temperature", 0)
    topk1 = gen_ids(shardlm, model, PROMPT, "--temperature", 0.8, "--top-k", 1, "--seed", 3)
    assert topk1 == greedy
    # A vanishing temperature is greedy too (and must not overflow to NaN).
    cold = gen_ids(shardlm, model, PROMPT, "--temperature", 1e-6, "--seed", 3)
    assert cold == greedy


def test_seeded_sampling_is_reproducible(shardlm, models):
    model = models.get("tiny", "f32")
    args = ("--temperature", 1.0, "--seed", 7)
    a = gen_ids(shardlm, model, PROMPT, *args)
    b = gen_ids(shardlm, model, PROMPT, *args)
    assert a == b
    greedy = gen_ids(shardlm, model, PROMPT, "--temperature", 0)
    others = [gen_ids(shardlm, model, PROMPT, "--temperature", 1.0, "--seed", s) for s in (8, 9)]
    assert any(o != a for o in others), "different seeds gave the same 16 sampled tokens"
    assert a != greedy, "temperature 1.0 sampling gave exactly the greedy sequence"
    # Batched sampling: each sequence draws its own tokens, still reproducibly.
    c = gen_ids(shardlm, model, PROMPT, *args, "--batch", 2)
    assert c == gen_ids(shardlm, model, PROMPT, *args, "--batch", 2)


def test_top_p(shardlm, models):
    model = models.get("tiny", "f32")
    greedy = gen_ids(shardlm, model, PROMPT, "--temperature", 0)
    # A tiny nucleus keeps only the most likely token: greedy.
    tiny_p = gen_ids(shardlm, model, PROMPT, "--temperature", 1.0, "--top-p", 1e-6, "--seed", 5)
    assert tiny_p == greedy
    # top-p 1 keeps everything and stays reproducible.
    a = gen_ids(shardlm, model, PROMPT, "--temperature", 1.0, "--top-p", 1.0, "--seed", 5)
    assert a == gen_ids(shardlm, model, PROMPT, "--temperature", 1.0, "--top-p", 1.0, "--seed", 5)
    b = gen_ids(shardlm, model, PROMPT, "--temperature", 1.0, "--top-p", 0.9, "--top-k", 50, "--seed", 5)
    assert len(b[0]) == N_NEW


@pytest.mark.parametrize("bad", ["1.5", "-0.1"])
def test_top_p_out_of_range_is_usage_error(shardlm, models, bad):
    model = models.get("tiny", "f32")
    p = shardlm.run("generate", "--model", model, "--prompt-ids", ids_arg(PROMPT), "--top-p", bad, check=False)
    assert p.returncode == 2, p.stderr
    assert "top-p" in p.stderr


def test_stop_ids(shardlm, models, tmp_path):
    model = models.get("tiny", "f32")
    prompts = [PROMPT[:6], PROMPT[6:]]
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(ids_arg(p) for p in prompts) + "\n")
    full = shardlm.generate_json(model, None, "--max-new-tokens", N_NEW, "--temperature", 0,
                                 ids_file=f)["generated_ids"]
    # A stop id from sequence 0's output (not its first token, not in sequence 1's output).
    candidates = [t for t in full[0][1:] if t not in full[1]]
    if not candidates:
        pytest.skip(f"no usable stop id in {full}")
    stop = candidates[0]
    cut = full[0].index(stop) + 1
    steps = tmp_path / "steps.npy"
    got = shardlm.generate_json(model, None, "--max-new-tokens", N_NEW, "--temperature", 0,
                                "--stop-ids", stop, "--dump-step-logits", steps, ids_file=f)["generated_ids"]
    assert got[0] == full[0][:cut], f"stop id {stop}: {got[0]} vs full {full[0]}"
    # One row per token sequence 0 generated.
    assert load_npy_f32(steps).shape[0] == cut
    assert got[1] == full[1], "a stop in one sequence must not end the others"
    # A stop id that only occurs in the prompt does not end generation.
    in_prompt = [t for t in prompts[0] if t not in full[0]]
    if in_prompt:
        got1 = gen_ids(shardlm, model, prompts[0], "--temperature", 0, "--stop-ids", in_prompt[0])
        assert got1[0] == full[0]
    # Several stop ids: stops at whichever comes first.
    first = full[0][0]
    got2 = gen_ids(shardlm, model, prompts[0], "--temperature", 0, "--stop-ids", f"{stop},{first}")
    assert got2[0] == [first]


def upcast_to_f32(src, dst):
    """Copy a checkpoint, rewriting every tensor as F32 with the same values."""
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    cfg["torch_dtype"] = "float32"
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    if (src / "model.safetensors.index.json").exists():
        shutil.copy(src / "model.safetensors.index.json", dst)
    for f in llama_ref.checkpoint_files(src):
        tensors = llama_ref.read_safetensors(f)  # BF16 / F16 widen exactly to float32
        for k, v in tensors.items():
            assert np.all(np.isfinite(v)), f"{f.name}: {k} holds inf or NaN"
        llama_ref.write_safetensors(dst / f.name, {k: v.astype(np.float32) for k, v in tensors.items()},
                                    metadata={"format": "pt"})


@pytest.mark.parametrize("dtype,st_dtype,torch_dtype", [("bf16", "BF16", "bfloat16"), ("f16", "F16", "float16")])
def test_half_precision_checkpoint_matches_f32_copy(dtype, st_dtype, torch_dtype, shardlm, models, tmp_path):
    half = models.get("tiny", dtype)
    cfg = json.loads((half / "config.json").read_text())
    assert cfg["torch_dtype"] == torch_dtype
    assert {dt for dt, _ in llama_ref.tensor_shapes(half).values()} == {st_dtype}
    f32 = tmp_path / "f32"
    upcast_to_f32(half, f32)
    a = gen_ids(shardlm, half, PROMPT, "--temperature", 0)
    b = gen_ids(shardlm, f32, PROMPT, "--temperature", 0)
    assert a == b, f"{dtype}: {a[0]}\nf32 copy: {b[0]}"
    # The same weights in either layout give close logits too.
    la, lb = tmp_path / "half.npy", tmp_path / "f32.npy"
    for model, out in ((half, la), (f32, lb)):
        shardlm.run("generate", "--model", model, "--prompt-ids", ids_arg(PROMPT),
                    "--max-new-tokens", 1, "--dump-logits", out)
    assert llama_ref.max_rel_err(load_npy_f32(la), load_npy_f32(lb)) <= 1e-2


def test_make_model_config_keys(models):
    model = models.get("tiny", "f32")
    cfg = json.loads((model / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "rope_theta", "vocab_size",
                "max_position_embeddings", "tie_word_embeddings", "torch_dtype"):
        assert key in cfg, f"config.json lacks {key}"
    assert cfg["torch_dtype"] == "float32"
    # The checkpoint holds exactly the tensors a Llama of this config has.
    shapes = llama_ref.tensor_shapes(model)
    want = llama_ref.expected_shapes(cfg)
    assert sorted(shapes) == sorted(want)
    for name, shape in want.items():
        assert tuple(shapes[name][1]) == shape, f"{name}: {shapes[name][1]} vs {shape}"


def test_make_model_is_deterministic(shardlm, tmp_path):
    dirs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        d = tmp_path / name
        shardlm.run("make-model", "--preset", "tiny", "--out", d, "--dtype", "bf16", "--seed", seed, timeout=120)
        dirs[name] = d
    names = sorted(p.name for p in dirs["a"].iterdir())
    assert names == sorted(p.name for p in dirs["b"].iterdir())
    for n in names:
        assert filecmp.cmp(dirs["a"] / n, dirs["b"] / n, shallow=False), f"{n} differs for the same seed"
    ta, tc = llama_ref.load_tensors(dirs["a"]), llama_ref.load_tensors(dirs["c"])
    assert ta.keys() == tc.keys()
    differing = [k for k in ta if not np.array_equal(ta[k], tc[k])]
    # Every random matrix differs between seeds (norm weights may be constant).
    assert any("embed_tokens" in k for k in differing)
    assert any("q_proj" in k for k in differing)


def _reference_rows(reference_cache, model, prompt, gen):
    """Reference logits from which each generated token was drawn."""
    full = reference_cache(model).forward(list(prompt) + list(gen[:-1]))
    return full[len(prompt) - 1:]


@pytest.mark.parametrize("seed", [1, 2])
def test_sampled_tokens_respect_top_k(seed, shardlm, models, reference_cache):
    model = models.get("tiny", "f32")
    k = 4
    gen = gen_ids(shardlm, model, PROMPT, "--temperature", 1.5, "--top-k", k, "--seed", seed)[0]
    rows = _reference_rows(reference_cache, model, PROMPT, gen)
    for i, (tok, row) in enumerate(zip(gen, rows)):
        kth = np.sort(row)[-k]
        assert row[tok] >= kth - 1e-4 * np.max(np.abs(row)), f"step {i}: token {tok} is outside the top {k}"
    assert len(set(gen)) > 1


@pytest.mark.parametrize("top_p,temperature", [(0.3, 1.0), (0.6, 0.5)])
def test_sampled_tokens_respect_top_p(top_p, temperature, shardlm, models, reference_cache):
    model = models.get("tiny", "f32")
    gen = gen_ids(shardlm, model, PROMPT, "--temperature", temperature, "--top-p", top_p, "--seed", 9)[0]
    rows = _reference_rows(reference_cache, model, PROMPT, gen)
    for i, (tok, row) in enumerate(zip(gen, rows)):
        probs = llama_ref.softmax(row / temperature)
        # Nucleus: the token is allowed when the tokens strictly more likely
        # than it hold less than top_p of the mass.
        before = probs[probs > probs[tok]].sum()
        assert before < top_p + 1e-3, f"step {i}: token {tok} lies outside the top-p {top_p} nucleus " \
                                      f"(mass before it {before:.4f})"


def _expected_distribution(logits, temperature, top_k=0, top_p=1.0):
    """The distribution a correct sampler draws from: softmax(logits / T)
    restricted to the top k, then to the smallest nucleus reaching top_p,
    renormalised (Hugging Face's order: temperature, top-k, top-p)."""
    probs = llama_ref.softmax(np.asarray(logits, np.float64) / temperature)
    order = np.argsort(-probs, kind="stable")
    keep = np.zeros_like(probs, dtype=bool)
    kept = order[:top_k] if top_k > 0 else order
    p = probs[kept] / probs[kept].sum()
    n = int(np.searchsorted(np.cumsum(p), top_p - 1e-12) + 1) if top_p < 1.0 else len(kept)
    keep[kept[:n]] = True
    out = np.where(keep, probs, 0.0)
    return out / out.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.3, 0, 1.0), (1.0, 6, 1.0),
                                                     (1.0, 0, 0.6)])
def test_sampling_follows_the_reference_distribution(temperature, top_k, top_p, shardlm, tmp_path):
    """First tokens of a large batch (one prompt repeated, each sequence its
    own random stream) follow the distribution from the reference logits:
    a chi-square bound about 6 standard deviations out, so it holds for any
    seed when the sampler is right and fails for a wrong temperature, top-k
    or top-p."""
    from conftest import write_micro_model

    model = write_micro_model(tmp_path / "m", seed=21)
    prompt = [3, 14, 15, 9]
    n = 1500
    extra = ["--temperature", temperature, "--seed", 123, "--batch", n]
    if top_k:
        extra += ["--top-k", top_k]
    if top_p < 1.0:
        extra += ["--top-p", top_p]
    gen = gen_ids(shardlm, model, prompt, *extra, n=1)
    assert len(gen) == n
    first = np.array([g[0] for g in gen])
    logits = llama_ref.LlamaRef.from_dir(model).forward(prompt)[-1]
    expected = _expected_distribution(logits, temperature, top_k, top_p)
    assert np.all(expected[first] > 0), \
        f"sampled tokens outside the allowed set: {sorted(set(first[expected[first] == 0].tolist()))}"
    counts = np.bincount(first, minlength=len(expected)).astype(np.float64)
    want = expected * n
    # Pool rare outcomes so every bin expects at least 5 draws.
    support = want > 0
    big = support & (want >= 5)
    obs = list(counts[big]) + [counts[support & ~big].sum()]
    exp = list(want[big]) + [want[support & ~big].sum()]
    obs, exp = np.array(obs), np.array(exp)
    obs, exp = obs[exp > 0], exp[exp > 0]
    chi2 = float(np.sum((obs - exp) ** 2 / exp))
    df = max(len(exp) - 1, 1)
    assert chi2 < df + 6 * np.sqrt(2 * df) + 10, f"chi-square {chi2:.1f} with {df} degrees of freedom"
    if len(exp) > 2:
        # The same bound rejects the distribution without the temperature / truncation.
        plain = llama_ref.softmax(logits) * n
        chi2_plain = float(np.sum((counts - plain) ** 2 / np.maximum(plain, 1e-9)))
        assert chi2_plain > chi2
