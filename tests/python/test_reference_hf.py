"""The NumPy reference (llama_ref.py) against Hugging Face transformers, the
definition of these architectures, wherever transformers and torch are
installed (they are not in CI: a CPU torch from PyPI is a multi-GB install).
Run locally with an interpreter that has them:

    python -m pytest tests/python/test_reference_hf.py

For every family preset and RoPE variant of test_families.py, the float64
logits of transformers and of the reference agree at every prompt position,
and so do greedy generation with transformers' KV cache and the reference's
step logits (which for dynamic NTK RoPE follow the cached rotation)."""

from __future__ import annotations

import numpy as np
import pytest

import llama_ref
from test_families import NEW_TOKENS, PRESETS, PROMPT, VARIANTS, family_model  # noqa: F401

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Both sides compute in float64; transformers' RoPE frequencies are float32.
TOLERANCE = 1e-6


def hf_model(model_dir):
    m = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    return m.eval()


@pytest.mark.parametrize("name", PRESETS + [v[0] for v in VARIANTS])
def test_reference_matches_transformers(family_model, name):  # noqa: F811
    model_dir = family_model(name)
    hf = hf_model(model_dir)
    ref = llama_ref.LlamaRef.from_dir(model_dir)
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        out = hf(ids, use_cache=True)
        got = out.logits[0].numpy()
        err = llama_ref.max_rel_err(ref.forward(PROMPT), got)
        assert err < TOLERANCE, f"{name}: prompt logits differ by {err:.3g}"
        # Greedy decoding one token at a time through transformers' cache.
        past, steps, tokens = out.past_key_values, [got[-1]], []
        for _ in range(NEW_TOKENS - 1):
            tokens.append(int(np.argmax(steps[-1])))
            out = hf(torch.tensor([[tokens[-1]]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits[0, -1].numpy())
        tokens.append(int(np.argmax(steps[-1])))
    want_tokens, want_steps = ref.greedy(PROMPT, NEW_TOKENS)
    err = llama_ref.max_rel_err(want_steps, np.stack(steps))
    assert err < TOLERANCE, f"{name}: cached decode logits differ by {err:.3g}"
    assert tokens == want_tokens
