"""Bad model-family input: config values shardlm does not compute with, and
checkpoints whose tensors disagree with the config, are one-line data errors
(exit 1) before any compute; a key shardlm does not know is a warning."""

import json

import numpy as np
import pytest

from conftest import micro_tensors, write_micro_model
from test_bad_input import expect_failure, generate


def set_config(model, **changes):
    path = model / "config.json"
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("rope_scaling,names", [
    ({"rope_type": "longrope", "factor": 2.0}, ["rope_scaling", "longrope"]),
    ({"factor": 2.0}, ["rope_scaling", "rope_type"]),
    ({"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 16}, ["rope_scaling", "low_freq_factor"]),
    ({"rope_type": "linear"}, ["rope_scaling", "factor"]),
    ({"rope_type": "linear", "factor": "4"}, ["rope_scaling", "factor"]),
    ({"rope_type": "linear", "factor": 0.5}, ["rope_scaling", "factor"]),
    ({"rope_type": "linear", "factor": 2.0, "low_freq_factor": 1.0}, ["rope_scaling", "low_freq_factor"]),
    ("llama3", ["rope_scaling", "object"]),
])
def test_bad_rope_scaling(shardlm, tmp_path, rope_scaling, names):
    model = write_micro_model(tmp_path / "m")
    set_config(model, rope_scaling=rope_scaling)
    expect_failure(shardlm, tmp_path, generate(model), 1, names=["config.json", *names])


@pytest.mark.parametrize("changes,names", [
    ({"architectures": ["GPT2LMHeadModel"]}, ["architectures", "GPT2LMHeadModel"]),
    ({"model_type": "mistral"}, ["model_type", "mistral"]),
    ({"hidden_act": "gelu"}, ["hidden_act", "gelu"]),
    ({"partial_rotary_factor": 0.5}, ["partial_rotary_factor"]),
    ({"quantization_config": {"quant_method": "gptq"}}, ["quantization_config"]),
    ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "use_mrope": True}, ["use_mrope"]),
    ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "use_sliding_window": True,
      "sliding_window": 8, "layer_types": ["full_attention"]}, ["layer_types"]),
])
def test_refused_config_values(shardlm, tmp_path, changes, names):
    model = write_micro_model(tmp_path / "m")
    set_config(model, **changes)
    expect_failure(shardlm, tmp_path, generate(model), 1, names=["config.json", *names])


def test_unknown_key_is_a_warning(shardlm, tmp_path):
    model = write_micro_model(tmp_path / "m")
    set_config(model, some_new_option=7, use_cache=True, transformers_version="4.44.0")
    p = shardlm.run(*generate(model))
    warnings = [l for l in p.stderr.splitlines() if l.startswith("shardlm: warning:")]
    assert len(warnings) == 1, p.stderr  # use_cache and transformers_version are known to be harmless
    assert "some_new_option" in warnings[0] and "config.json" in warnings[0]


def test_bias_of_the_wrong_shape(shardlm, tmp_path):
    cfg_changes = {"attention_bias": True}
    tensors = micro_tensors(dict(llama_ref_cfg(), **cfg_changes))
    tensors["model.layers.1.self_attn.k_proj.bias"] = np.zeros(5, np.float32)
    model = write_micro_model(tmp_path / "m", tensors=tensors, **cfg_changes)
    expect_failure(shardlm, tmp_path, generate(model), 1,
                   names=["model.layers.1.self_attn.k_proj.bias", "[5]", "[24]"])


@pytest.mark.parametrize("name,shape,key", [
    ("model.layers.0.self_attn.q_proj.bias", 48, "attention_bias"),
    ("model.layers.1.mlp.down_proj.bias", 32, "mlp_bias"),
])
def test_bias_the_config_says_is_absent(shardlm, tmp_path, name, shape, key):
    tensors = micro_tensors(llama_ref_cfg())
    tensors[name] = np.zeros(shape, np.float32)
    model = write_micro_model(tmp_path / "m", tensors=tensors)
    expect_failure(shardlm, tmp_path, generate(model), 1, names=[name, key])


@pytest.mark.parametrize("changes,missing", [
    ({"mlp_bias": True}, "model.layers.0.mlp.up_proj.bias"),
    ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}, "model.layers.1.self_attn.v_proj.bias"),
])
def test_bias_the_config_says_is_present_is_missing(shardlm, tmp_path, changes, missing):
    tensors = micro_tensors(dict(llama_ref_cfg(), **changes))
    del tensors[missing]
    model = write_micro_model(tmp_path / "m", tensors=tensors, **changes)
    expect_failure(shardlm, tmp_path, generate(model), 1, names=[missing, "missing"])


def test_tensor_no_family_uses(shardlm, tmp_path):
    tensors = micro_tensors(llama_ref_cfg())
    tensors["model.layers.0.self_attn.q_norm.weight"] = np.ones(12, np.float32)
    model = write_micro_model(tmp_path / "m", tensors=tensors)
    expect_failure(shardlm, tmp_path, generate(model), 1, names=["q_norm.weight", "does not use"])


def test_tied_model_with_a_different_lm_head_warns_and_uses_the_embedding(shardlm, tmp_path):
    tensors = micro_tensors(llama_ref_cfg())  # MICRO_CONFIG is tied
    plain = write_micro_model(tmp_path / "plain", tensors=dict(tensors))
    same = dict(tensors, **{"lm_head.weight": tensors["model.embed_tokens.weight"].copy()})
    other = dict(tensors, **{"lm_head.weight": np.ones_like(tensors["model.embed_tokens.weight"])})
    logits = {}
    for name, t in (("plain", None), ("same", same), ("other", other)):
        model = plain if t is None else write_micro_model(tmp_path / name, tensors=t)
        out = tmp_path / f"{name}.npy"
        p = shardlm.run(*generate(model), "--dump-logits", out)
        warned = [l for l in p.stderr.splitlines() if l.startswith("shardlm: warning:")]
        assert len(warned) == (1 if name == "other" else 0), p.stderr
        if warned:
            assert "lm_head.weight" in warned[0] and "tie_word_embeddings" in warned[0]
        logits[name] = np.load(out)
    np.testing.assert_array_equal(logits["same"], logits["plain"])
    np.testing.assert_array_equal(logits["other"], logits["plain"])


def test_old_checkpoints_rotary_buffers_are_ignored(shardlm, tmp_path):
    tensors = micro_tensors(llama_ref_cfg())
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(6, np.float32)
    model = write_micro_model(tmp_path / "m", tensors=tensors)
    shardlm.run(*generate(model))


def llama_ref_cfg():
    from conftest import MICRO_CONFIG
    return dict(MICRO_CONFIG)
