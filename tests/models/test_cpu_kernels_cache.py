"""The C++ kernels' build cache (issue 14, item 12): a corrupt cached build is deleted once and
rebuilt, only a folder torch made for our extension is ever deleted, a lock left by a killed
build never blocks, and waiting for another build is bounded."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from fcos_core.models import cpu_kernels


class FakeCppExtension:
    """Stands in for torch.utils.cpp_extension: builds into ``root/<name>``; ``load`` runs
    ``on_load(build_dir)``."""

    def __init__(self, root: Path, on_load, file_lock: bool = True) -> None:
        self.root, self.on_load, self.calls = root, on_load, []
        self.JIT_EXTENSION_VERSIONER = types.SimpleNamespace(entries={})
        if file_lock:
            self.FileLock = object

    def _get_build_directory(self, name, verbose):
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def load(self, **kwargs):
        # whether torch would think this process built it already (and skip building)
        kwargs["_known"] = kwargs["name"] in self.JIT_EXTENSION_VERSIONER.entries
        self.calls.append(kwargs)
        self.JIT_EXTENSION_VERSIONER.entries[kwargs["name"]] = 0
        self.on_load(Path(kwargs["build_directory"]))


@pytest.fixture
def no_ops(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "OPS", ())  # the fakes register nothing


def _corrupt_build(build_dir: Path) -> Path:
    build_dir.mkdir(parents=True, exist_ok=True)
    so = build_dir / f"{build_dir.name}.so"
    so.write_bytes(b"truncated")
    (build_dir / "a.o").write_bytes(b"obj")
    (build_dir / "build.ninja").write_text("rule cc\n")
    return so


def test_a_cut_short_library_is_deleted_before_it_is_loaded(tmp_path, no_ops):
    # loading a truncated ELF can kill the process (SIGBUS): it never gets to dlopen
    name = cpu_kernels._build_name()
    so = _corrupt_build(tmp_path / name)
    seen = []

    def on_load(build_dir):
        seen.append(sorted(p.name for p in build_dir.iterdir()))
        (build_dir / f"{name}.so").write_bytes(b"\x7fELF fresh")

    fake = FakeCppExtension(tmp_path, on_load)
    fake.JIT_EXTENSION_VERSIONER.entries[name] = 0  # loaded once before in this process
    cpu_kernels._load(fake, verbose=False)
    assert seen == [[]] and so.read_bytes() == b"\x7fELF fresh"
    assert [c["_known"] for c in fake.calls] == [False]


def test_a_cached_build_that_cannot_load_is_deleted_and_rebuilt_once(tmp_path, no_ops, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_library_cut_short", lambda lib: False)
    name = cpu_kernels._build_name()
    so = _corrupt_build(tmp_path / name)

    def on_load(build_dir):
        lib = build_dir / f"{name}.so"
        if lib.exists() and lib.read_bytes() == b"truncated":  # what ninja keeps: "up to date"
            raise OSError(f"{lib}: invalid ELF header")
        lib.write_bytes(b"\x7fELF fresh")

    fake = FakeCppExtension(tmp_path, on_load)
    cpu_kernels._load(fake, verbose=False)
    assert len(fake.calls) == 2 and so.read_bytes() == b"\x7fELF fresh"
    assert [c["_known"] for c in fake.calls] == [False, False]  # the retry really builds
    assert not (tmp_path / name / "a.o").exists()  # the whole folder was rebuilt


def test_a_folder_with_other_files_is_never_deleted(tmp_path, no_ops):
    name = cpu_kernels._build_name()
    so = _corrupt_build(tmp_path / name)
    (tmp_path / name / "my_notes.txt").write_text("mine")

    def on_load(build_dir):
        raise OSError(f"{so}: invalid ELF header")

    with pytest.raises(OSError, match="invalid ELF header"):
        cpu_kernels._load(FakeCppExtension(tmp_path, on_load), verbose=False)
    assert (tmp_path / name / "my_notes.txt").read_text() == "mine" and so.exists()


def test_a_build_failure_is_not_taken_for_a_corrupt_cache(tmp_path, no_ops, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_library_cut_short", lambda lib: False)
    name = cpu_kernels._build_name()
    so = _corrupt_build(tmp_path / name)

    def on_load(build_dir):
        raise OSError("g++: command not found")  # names nothing in the cache folder

    fake = FakeCppExtension(tmp_path, on_load)
    with pytest.raises(OSError, match="g\\+\\+"):
        cpu_kernels._load(fake, verbose=False)
    assert len(fake.calls) == 1 and so.exists()


def test_a_filebaton_lock_left_by_a_killed_build_is_removed(tmp_path, no_ops):
    name = cpu_kernels._build_name()
    (tmp_path / name).mkdir()
    (tmp_path / name / "lock").touch()  # torch's FileBaton would wait on it forever
    seen = []
    fake = FakeCppExtension(tmp_path, lambda d: seen.append((d / "lock").exists()), file_lock=False)
    cpu_kernels._load(fake, verbose=False)
    assert seen == [False]
    # a torch that locks with FileLock keeps its lock file: left alone
    (tmp_path / name / "lock").touch()
    fake = FakeCppExtension(tmp_path, lambda d: seen.append((d / "lock").exists()))
    cpu_kernels._load(fake, verbose=False)
    assert seen == [False, True]


def _hold_lock(path: Path) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import fcntl, os, time
        fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock")
def test_waiting_for_another_build_is_bounded_and_a_killed_holder_frees_it(
    tmp_path, no_ops, monkeypatch
):
    name = cpu_kernels._build_name()
    lock = tmp_path / f".{name}.fcos-lock"
    fake = FakeCppExtension(tmp_path, lambda d: None)
    monkeypatch.setenv("FCOS_CPU_KERNELS_LOCK_TIMEOUT", "0.5")
    holder = _hold_lock(lock)
    try:
        with pytest.raises(RuntimeError, match="waited 0 s for another process building"):
            cpu_kernels._load(fake, verbose=False)
        assert fake.calls == []
    finally:
        holder.send_signal(signal.SIGKILL)  # like a build killed by the OOM killer
        holder.wait()
    monkeypatch.setenv("FCOS_CPU_KERNELS_LOCK_TIMEOUT", "30")
    cpu_kernels._load(fake, verbose=False)  # the kernel released the dead holder's lock
    assert len(fake.calls) == 1


_PROBE = (
    "import warnings; warnings.simplefilter('error')\n"
    "from fcos_core.models import cpu_kernels\n"
    "print('RESULT', cpu_kernels.available(), cpu_kernels.error())"
)


def _result(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return lines[-1].split()[1] if lines else "no result"


@pytest.mark.slow
def test_a_truncated_library_in_the_real_cache_is_rebuilt(tmp_path):
    """End to end with torch's builder: the run after a killed link used to warn and fall back
    in every later run (ninja keeps the newer, broken library)."""
    import torch  # noqa: F401
    from torch.utils import cpp_extension

    name = cpu_kernels._build_name()
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "OMP_NUM_THREADS": "1"}
    build_dir = tmp_path / "ext" / name
    cached = Path(cpp_extension._get_build_directory(name, False))
    if (cached / f"{name}.so").is_file():  # reuse this machine's build: no compile needed
        shutil.copytree(cached, build_dir, ignore=shutil.ignore_patterns("lock"))
    first = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=600
    )
    assert _result(first) == "True", first.stdout + first.stderr
    lib = build_dir / f"{name}.so"
    lib.write_bytes(lib.read_bytes()[:4096])  # cut short, and newer than its inputs
    second = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=600
    )
    assert _result(second) == "True", second.stdout + second.stderr
    assert "deleting it and rebuilding" in second.stdout + second.stderr
    mtime = lib.stat().st_mtime_ns
    third = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=600
    )
    assert _result(third) == "True" and lib.stat().st_mtime_ns == mtime
    assert "rebuilding" not in third.stdout + third.stderr
