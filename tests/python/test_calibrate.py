"""`shardlm calibrate` end to end: the spec it writes (with the `measured:`
section the cost model prices by) loads in `plan` and `generate`, the two
price a run alike (decode at max_new_tokens - 1 steps: the first new token
comes from prefill), and under mpirun it also measures the rates of one
rank alone on its node and the per-collective overhead."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import MPI_ENV, PROMPT


def table(text: str, key: str) -> list[tuple[float, float]]:
    m = re.search(rf"^  {key}: \[(.*)\]$", text, re.M)
    assert m, f"no {key} in the spec:\n{text}"
    return [(float(a), float(b)) for a, b in re.findall(r"\[([-0-9.e+]+), ([-0-9.e+]+)\]", m.group(1))]


def test_one_rank_spec_prices_generate_as_plan_does(shardlm, models, tmp_path):
    spec = tmp_path / "one.yaml"
    shardlm.run("calibrate", "--quick", "--out", spec, "--name", "one")
    text = spec.read_text()
    rows = table(text, "matmul_flops_by_rows")
    assert [r for r, _ in rows] == [1, 2, 4, 8, 16, 17, 32, 64, 128, 512, 2048]
    assert all(1e8 < f < 1e14 for _, f in rows)
    assert len(table(text, "memory_Bps_by_bytes")) >= 3
    assert "matmul_flops_by_rows_alone" not in text  # one rank: it is alone already
    assert re.search(r"^  token_overhead_s: ", text, re.M)

    model = models.get("tiny", "bf16")
    new_tokens = 6
    out = shardlm.generate_json(model, PROMPT, "--batch", 2, "--max-new-tokens", new_tokens,
                                "--hardware", spec)
    predicted = out["predicted"]
    plan = shardlm.run("plan", "--model", model, "--hardware", spec, "--chips", 1, "--mesh", "1,1,1",
                       "--batch", 2, "--prompt-len", len(PROMPT), "--gen-len", new_tokens - 1,
                       "--weights", "bf16", "--ffn-layout-prefill", out["layouts"]["prefill"]["ffn"],
                       "--ffn-layout-decode", out["layouts"]["decode"]["ffn"],
                       "--attn-layout-prefill", out["layouts"]["prefill"]["attn"],
                       "--attn-layout-decode", out["layouts"]["decode"]["attn"], "--json")
    planned = json.loads(plan.stdout)
    for phase in ("prefill", "decode"):
        assert predicted[phase]["latency_s"] == pytest.approx(planned[phase]["latency_s"], rel=1e-9)
    assert out["decode_tokens"] == 2 * (new_tokens - 1)


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")
def test_two_ranks_measure_alone_and_collectives(shardlm, tmp_path):
    spec = tmp_path / "two.yaml"
    p = subprocess.run(["mpirun", "-n", "2", str(shardlm.path), "calibrate", "--quick", "--out", str(spec)],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, **MPI_ENV))
    assert p.returncode == 0, p.stderr
    text = spec.read_text()
    assert len(table(text, "matmul_flops_by_rows_alone")) == 11
    assert len(table(text, "memory_Bps_by_bytes_alone")) >= 3
    assert re.search(r"^  collective_overhead_s: ", text, re.M)
    # The machine's speed at the start and at the end, both measured.
    speeds = re.search(r"^# Speed at the start and at the end .*: (\S+) -> (\S+) FLOP/s, (\S+) -> (\S+) B/s", text, re.M)
    assert speeds and all(float(v) > 0 for v in speeds.groups())
    # Every collective kind timed by size over the two ranks, each time growing with its bytes;
    # one node: nothing across nodes, and no nodes sharing cores.
    assert re.search(r"^  collective_members: 2$", text, re.M)
    for kind in ("all-gather", "all-reduce", "reduce-scatter", "all-to-all"):
        times = [(float(a), float(b)) for a, b in re.findall(
            r"\[([-0-9.e+]+), ([-0-9.e+]+)\]", re.search(rf"^    {kind}: (.*)$", text, re.M).group(1))]
        assert len(times) >= 3, kind
        assert times[-1][1] > times[0][1], (kind, times)
    assert "inter_node_collective_s_by_bytes" not in text and "nodes_share_cores" not in text
    # The engine runs behind the overheads are listed, 1d, 2d and wg-x on both ranks.
    for layout in ("1d", "2d", "wg-x"):
        assert f"mesh x=2 y=1 z=1 {layout} decode batch 1 prompt 16" in text
    shardlm.run("plan", "--model", "small", "--hardware", spec, "--chips", 2, "--batch", 1,
                "--prompt-len", 16, "--gen-len", 4)
