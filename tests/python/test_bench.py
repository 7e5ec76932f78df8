"""`shardlm bench`: --context (-d) puts d tokens of context before the prompt,
and every row carries the decode roofline max(bytes / bandwidth, FLOP / peak)
with the fraction reached. Checked on `tiny` against the model's shapes:
the KV bytes a decode step reads grow by 2 * layers * kv_dim * bytes per
value * d * batch between d = 0 and d, at the KV dtype's bytes per value."""

from __future__ import annotations

import json

import pytest

FAST = ["-t", "1", "-r", "1", "--bandwidth-gib", "0.05", "-o", "json"]


def bench(shardlm, model, *args):
    p = shardlm.run("bench", "--model", model, *FAST, *args)
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def model(models):
    return models.get("tiny")


@pytest.fixture(scope="module")
def config(model):
    with open(f"{model}/config.json") as f:
        return json.load(f)


@pytest.mark.parametrize("kv, value_bytes", [("bf16", 2), ("f32", 4)])
def test_context_adds_its_kv_bytes_and_the_roofline_follows(kv, value_bytes, shardlm, model, config):
    out = bench(shardlm, model, "-p", "8", "-n", "2", "-b", "2", "-d", "0,16", "--kv-dtype", kv)
    rows = {r["d"]: r for r in out["rows"]}
    assert sorted(rows) == [0, 16]
    kv_dim = config["num_key_value_heads"] * config["hidden_size"] // config["num_attention_heads"]
    per_token = 2 * config["num_hidden_layers"] * kv_dim * value_bytes
    grown = rows[16]["decode_step_bytes"] - rows[0]["decode_step_bytes"]
    assert grown == pytest.approx(per_token * 16 * 2, rel=1e-9)
    for r in rows.values():
        step_s = max(r["decode_step_bytes"] / r["bandwidth_Bps"], r["decode_step_flop"] / r["peak_flops"])
        assert r["decode_roofline_fraction"] == pytest.approx(r["decode_tok_s"] * step_s / 2, rel=1e-6)
        assert 0 < r["decode_roofline_fraction"]
        assert 0 < r["prefill_roofline_fraction"]


def test_negative_context_is_a_usage_error(shardlm, model):
    p = shardlm.run("bench", "--model", model, "-d", "-1", check=False)
    assert p.returncode != 0
    assert "-d values must be >= 0" in p.stderr


@pytest.mark.parametrize("flag, said", [("auto", "f32"), ("bf16", "bf16")])
def test_the_activations_are_said(flag, said, shardlm, model):
    # auto on the CPU is f32; the JSON and the markdown header both say which ran.
    out = bench(shardlm, model, "-p", "4", "-n", "2", "--activations", flag)
    assert out["activations"] == said
    p = shardlm.run("bench", "--model", model, "-t", "1", "-r", "1", "--bandwidth-gib", "0.05",
                    "-p", "4", "-n", "2", "--activations", flag)
    assert f"{said} activations" in p.stdout
