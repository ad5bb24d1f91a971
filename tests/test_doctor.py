"""`valley doctor`: the CPU checks run and pass here, a failure is named and exits non-zero; the GPU
acceptance checks (`make gpu-check`) run only where CUDA is (marker `gpu`)."""

from __future__ import annotations

import os

import pytest

from valley import doctor


def test_cpu_checks_pass_here(ray_local, tmp_path, capsys):
    code = doctor.main(storage_root=str(tmp_path / "store"))
    out = capsys.readouterr().out
    assert code == 0, out
    for name in ("python", "sandbox (bwrap)", "ray", "deepspeed", "storage"):
        assert f"[  ok] {name}:" in out
    assert out.strip().endswith("all checks passed")


def test_deepspeed_check_reports_ops():
    check = doctor._run("deepspeed", doctor.check_deepspeed)
    assert check.ok, check.detail
    assert "DeepSpeed" in check.detail
    if check.data:  # train/ops.py's report: which ops are prebuilt and where JIT builds go
        assert {"accelerator", "prebuilt", "extensions_dir"} <= set(check.data)


def test_unwritable_storage_fails_by_name(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(doctor, "check_ray", lambda: "skipped in this test")
    code = doctor.main(storage_root=str(blocker / "store"))
    out = capsys.readouterr().out
    assert code == 1
    assert "[FAIL] storage:" in out and out.strip().endswith("failed: storage")


def test_failing_check_is_reported_not_raised():
    def broken() -> str:
        raise RuntimeError("no such thing")

    check = doctor._run("thing", broken)
    assert not check.ok and check.detail == "RuntimeError: no such thing"
    assert doctor.report([check]).splitlines()[-1] == "failed: thing"


def test_gpu_checks_fail_clearly_without_cuda(monkeypatch):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA; see test_gpu_acceptance")
    checks = doctor.gpu_checks()
    assert [c.name for c in checks] == ["cuda + bf16"] and not checks[0].ok
    assert "sees no CUDA device" in checks[0].detail


def test_cli_doctor(tmp_path, capsys, monkeypatch):
    from valley.cli import main

    monkeypatch.setattr(doctor, "check_ray", lambda: "skipped in this test")
    assert main(["doctor", "--storage", str(tmp_path / "s")]) == 0
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.gpu
def test_gpu_acceptance(tmp_path, capsys):
    """`make gpu-check` on a GPU node: CUDA+bf16, FA2/Flex vs SDPA loss, a ZeRO-3 step on every GPU, vLLM."""
    assert doctor.main(storage_root=str(tmp_path / "store"), gpu=True) == 0, capsys.readouterr().out


def test_gpu_constraints_agree_with_the_package_and_makefile():
    """The pinned GPU set (resolved for real by benchmarks/check_gpu_install.py) matches the `gpu` extra,
    has no source-only package, and `make install-gpu` installs its torch first."""
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # Under `make test` (CI passes TORCH_INDEX= on make's command line) MAKEFLAGS would hand that override
    # to every nested make: run them with a clean make environment.
    # make also exports command-line variables to its recipes' environment, where `?=` would take them.
    make_vars = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "TORCH_INDEX", "TORCH_SPEC", "CONSTRAINTS",
                 "EXTRAS", "DS_BUILD", "PIP_C")
    env = {k: v for k, v in os.environ.items() if k not in make_vars}
    pins = dict(re.findall(r"^([a-z0-9_.\-]+)==(\S+)", (root / "constraints" / "gpu.txt").read_text(), re.M))
    extra = re.search(r"^gpu = \[(.*)\]$", (root / "pyproject.toml").read_text(), re.M).group(1)
    assert f"vllm=={pins['vllm']}" in extra
    assert "flash-attn" not in pins and not any("flash" in e and "attn" in e for e in extra)
    assert {"torch", "deepspeed", "ray"} <= set(pins)
    dry = subprocess.run(["make", "-n", "--always-make", "install-gpu"], cwd=root, capture_output=True, text=True,
                         env=env)
    assert f'TORCH_SPEC="torch=={pins["torch"]}"' in dry.stdout and "CONSTRAINTS=constraints/gpu.txt" in dry.stdout
    cpu = subprocess.run(["make", "-n", "--always-make", "install"], cwd=root, capture_output=True, text=True,
                         env=env)
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu.stdout  # users: PyTorch's CPU wheels
    ci = subprocess.run(["make", "-n", "--always-make", "install", "TORCH_INDEX="], cwd=root, capture_output=True,
                        text=True, env=env)
    assert "download.pytorch.org" not in ci.stdout  # CI (.ci/run): PyPI only
    assert "TORCH_INDEX=" in (root / ".ci" / "run").read_text()
