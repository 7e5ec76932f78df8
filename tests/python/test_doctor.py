"""`shardlm doctor`: the machine report, alone and under mpirun."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

from test_tensor_parallel import MPI_ENV

SIMD_FLAGS = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16",
              "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"}


def field(stdout: str, name: str) -> str:
    lines = [l for l in stdout.splitlines() if l.strip().startswith(name + ":")]
    assert len(lines) == 1, f"{name!r} not printed once:\n{stdout}"
    return lines[0].split(":", 1)[1].strip()


def test_doctor_reports_this_machine(shardlm):
    p = shardlm.run("doctor")
    with open("/proc/cpuinfo") as f:
        flags = next(l for l in f if l.startswith("flags")).split(":", 1)[1].split()
    assert set(field(p.stdout, "cpu features").split()) == SIMD_FLAGS & set(flags)
    assert field(p.stdout, "MPI").startswith("Open MPI")
    assert field(p.stdout, "job") == "one process (not under mpirun)"
    # Each GPU library is either a version or says what is missing.
    for lib in ("CUDA driver", "CUDA runtime", "cuBLASLt", "NCCL"):
        value = field(p.stdout, lib)
        assert value[0].isdigit() or value.startswith("not found"), value
    gpus = field(p.stdout, "GPUs") if "GPUs:" in p.stdout else ""
    assert gpus.startswith("none: ") or "GPU 0:" in p.stdout


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")
def test_doctor_under_mpirun_maps_every_rank_once(shardlm):
    p = subprocess.run(["mpirun", "-n", "2", str(shardlm.path), "doctor"], capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, **MPI_ENV))
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("shardlm doctor") == 1  # rank 0 alone prints
    assert field(p.stdout, "job") == "2 ranks on 1 node"
    host = socket.gethostname()
    for rank in (0, 1):
        line = next(l for l in p.stdout.splitlines() if l.startswith(f"rank {rank}:"))
        assert f"host {host}, local rank {rank} of 2" in line


def doctor_wait_choice(shardlm, **env) -> str:
    """What `doctor` says of idle OpenMP threads, started with none of the wait
    settings in its environment but `env`, and two threads."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "SHARDLM_OPENMP_WAIT")}
    p = subprocess.run([str(shardlm.path), "doctor"], capture_output=True, text=True, timeout=120,
                       env=dict(base, OMP_NUM_THREADS="2", **env))
    assert p.returncode == 0, p.stderr
    return field(p.stdout, "OpenMP waits")


def test_idle_threads_sleep_when_other_work_holds_the_cores(shardlm):
    # As many busy processes as this process may use cores: the threads would
    # spin on cores that other work needs, so shardlm starts itself again with
    # OMP_WAIT_POLICY=passive (and the restarted doctor reports it).
    busy = [subprocess.Popen(["python3", "-c", "while True: pass"])
            for _ in range(len(os.sched_getaffinity(0)))]
    try:
        choice = doctor_wait_choice(shardlm)
    finally:
        for b in busy:
            b.kill()
            b.wait()
    assert choice.startswith("passive: "), choice
    assert "other task(s) running" in choice


def test_wait_setting_in_the_environment_is_kept(shardlm):
    choice = doctor_wait_choice(shardlm, OMP_WAIT_POLICY="active")
    assert choice == "set by the environment (OMP_WAIT_POLICY=active, GOMP_SPINCOUNT=unset)"
    assert doctor_wait_choice(shardlm, GOMP_SPINCOUNT="1000").endswith("GOMP_SPINCOUNT=1000)")
