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


@pytest.mark.parametrize("activations", ["f32", "bf16"])
def test_hardware_adds_the_planners_prediction_of_every_row(activations, shardlm, model):
    # Each row's predicted rates are what `shardlm plan` prices for the same
    # layout, dtypes and workload: d + p prompt tokens, and the n - 1 decode
    # steps a run of n new tokens takes (plan's --gen-len counts steps).
    out = bench(shardlm, model, "-p", "8", "-n", "3", "-b", "1,2", "-d", "0,16",
                "--weights", "bf16", "--kv-dtype", "f32", "--activations", activations,
                "--hardware", "cpu-local")
    assert out["predicted_on"] == "cpu-local"
    assert len(out["rows"]) == 4
    for r in out["rows"]:
        prompt = r["d"] + r["p"]
        p = shardlm.run("plan", "--model", model, "--hardware", "cpu-local", "--chips", "1",
                        "--mesh", "1,1,1", "--batch", str(r["batch"]), "--prompt-len", str(prompt),
                        "--gen-len", str(r["n"] - 1), "--weights", "bf16", "--kv-dtype", "f32",
                        "--activations", activations, "--ffn-layout-prefill", "2d",
                        "--ffn-layout-decode", "2d", "--attn-layout-prefill", "heads",
                        "--attn-layout-decode", "heads", "--json")
        plan = json.loads(p.stdout)
        prefill_tps = r["batch"] * prompt / plan["prefill"]["latency_s"]
        decode_tps = r["batch"] * (r["n"] - 1) / plan["decode"]["latency_s"]
        assert r["predicted_prefill_tok_s"] == pytest.approx(prefill_tps, rel=1e-9)
        assert r["predicted_decode_tok_s"] == pytest.approx(decode_tps, rel=1e-9)
    # Without a spec nothing is predicted.
    assert "predicted_on" not in bench(shardlm, model, "-p", "4", "-n", "2")
