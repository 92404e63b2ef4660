"""The C++ CPU training kernels are optional (issue 16, item 7): without ninja or a C++ compiler
training runs the stock ops -- the same losses -- and one log note says how to enable them;
with them the kernels are used; ``fcos build-kernels`` builds ahead of time and fails clearly
without them."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch
from structlog.testing import capture_logs

from fcos_core.cli.main import main
from fcos_core.models import cpu_kernels, fast_batchnorm
from fcos_core.testing.detection_data import synthetic_batch


def _tool(folder: Path, name: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


@pytest.fixture
def no_build_tools(tmp_path, monkeypatch):
    """A PATH with neither ninja nor a compiler, no ``ninja`` package, no ``$CXX``; the
    kernels' availability decided afresh."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("FCOS_CPU_KERNELS", raising=False)
    monkeypatch.setitem(sys.modules, "ninja", None)  # `import ninja` raises ImportError
    monkeypatch.setattr(cpu_kernels, "_state", {"available": None, "error": None})
    return empty


def test_missing_requirements_names_what_to_install(no_build_tools, monkeypatch):
    assert cpu_kernels.missing_requirements() == ["ninja", "a C++ compiler ('c++' is not on PATH)"]
    _tool(no_build_tools, "ninja")
    _tool(no_build_tools, "clang++")
    monkeypatch.setenv("CXX", "clang++ -stdlib=libc++")  # $CXX's first word is the compiler
    assert cpu_kernels.missing_requirements() == []
    monkeypatch.setenv("CXX", str(no_build_tools / "g++"))
    assert cpu_kernels.missing_requirements() == [
        f"a C++ compiler ({str(no_build_tools / 'g++')!r} is not on PATH)"
    ]


def _train(make_fcos, steps: int = 3) -> tuple[list[float], int]:
    """``steps`` SGD steps of a small channels-last FCOS on a fixed batch: the loss of each
    step and how many BatchNorm calls took the fused C++ kernel."""
    torch.manual_seed(0)
    model = make_fcos().train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = synthetic_batch(n=2, seed=3, size=64)
    batch["img"] = batch["img"].contiguous(memory_format=torch.channels_last)
    fused_calls = 0
    real = fast_batchnorm._BatchNormAct.apply

    def counting(*args):
        nonlocal fused_calls
        fused_calls += 1
        return real(*args)

    losses = []
    fast_batchnorm._BatchNormAct.apply = counting
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            loss = sum(model(batch).values())
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        fast_batchnorm._BatchNormAct.apply = real
    return losses, fused_calls


def test_training_without_the_kernels_matches_and_notes_once(tiny, no_build_tools, monkeypatch):
    with monkeypatch.context() as m:  # this machine's real tools: the kernels build
        m.setattr(cpu_kernels, "_state", {"available": None, "error": None})
        m.setenv("PATH", os.defpath + os.pathsep + str(Path(sys.executable).parent))
        m.delitem(sys.modules, "ninja")
        assert cpu_kernels.available(), cpu_kernels.error()
        with_kernels, fused = _train(tiny.make_fcos)
    assert fused > 0  # the head's BatchNorm+ReLU went through the kernel

    with capture_logs() as logs:
        stock, fused = _train(tiny.make_fcos)
    assert fused == 0
    assert cpu_kernels.error() == "not installed: ninja, a C++ compiler ('c++' is not on PATH)"
    notes = [e for e in logs if e["event"] == "cpu_kernels_not_installed"]
    assert len(notes) == 1  # once per process, though every BatchNorm asked
    assert "pip install 'fcos-core[cpu-kernels]'" in notes[0]["enable"]
    assert notes[0]["log_level"] == "info"
    # the kernels compute the same function: float32 summation order apart (1e-7 relative
    # here after three steps), the same losses
    torch.testing.assert_close(torch.tensor(stock), torch.tensor(with_kernels), rtol=1e-5, atol=0.0)


def test_switched_off_kernels_give_no_note(no_build_tools, monkeypatch):
    monkeypatch.setenv("FCOS_CPU_KERNELS", "0")
    with capture_logs() as logs:
        assert cpu_kernels.available() is False
    assert logs == []
    assert cpu_kernels.error() == "FCOS_CPU_KERNELS=0"


def test_build_kernels_command_reports_the_cache(capsys):
    assert main(["build-kernels"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"kernels: (built|loaded from the cache) in (\d+\.\d) s\ncache: (\S+) ", out)
    assert match, out
    folder = Path(match.group(3))
    assert folder.name == cpu_kernels._build_name()  # keyed as ever: CPU, torch, sources
    assert (folder / f"{folder.name}.so").is_file()
    assert cpu_kernels.available()
    # a second call reuses the cache
    assert main(["build-kernels"]) == 0
    assert "loaded from the cache" in capsys.readouterr().out


def test_build_kernels_command_fails_clearly_without_the_tools(no_build_tools, capsys):
    assert main(["build-kernels"]) == 2
    err = capsys.readouterr().err
    assert (
        "cannot build fcos's C++ CPU training kernels: not installed: ninja, a C++ compiler"
    ) in err
    assert "fix: pip install 'fcos-core[cpu-kernels]'" in err
    assert "Traceback" not in err
