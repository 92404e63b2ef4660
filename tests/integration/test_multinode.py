"""Several machines, simulated on this one: two ``torchrun`` launchers as two nodes.

Each launcher is started as its own node (``--nnodes 2 --node-rank 0/1``) with one process,
c10d rendezvous on 127.0.0.1 and gloo, running the demo config's float stage for a few steps
(the demo's 128x128 input, batch 2 per process, data-parallel trainer with synchronised
BatchNorm). Each node has its own run folder and checkpoint folder, as separate machines
without shared storage would.

* both processes end with identical weights, and only global rank 0 wrote checkpoints, logs
  and the run folder (the other node's folders are never created);
* killing one node mid-run (its launcher and its training process, SIGKILL) ends the other
  with fcos's one-line ``PeerLostError`` and a non-zero exit, within seconds, not a hang;
* a peer that stays silent (never reaches the collective) is waited for the configured
  process-group timeout (``dist_timeout_s``), then the same clear error.

Linux only (the test finds a launcher's training process through /proc).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="finds the launchers' children through /proc (Linux)",
)

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DEMO = ROOT / "configs" / "fcos_b0_demo.yaml"
PEER_LOST = "another process stopped or stopped answering"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """A small demo data set (16 training images) both nodes read."""
    from fcos_plugin_coco.demo.generate import DemoParams, ensure_demo

    root = tmp_path_factory.mktemp("demo")
    ensure_demo(str(root), DemoParams(num_train=16, num_val=8))
    return root


def _overrides(data: Path, node_dir: Path, steps: int) -> list[str]:
    # 16 images, batch 2 per process, 2 processes: 4 steps per epoch
    epochs = -(-steps // 4)
    return [
        f"vars.data_root={data}",
        f"ckpt_dir={node_dir / 'ckpt'}",
        "vars.batch_size_per_gpu=2",
        f"float_trainer.num_epochs={epochs}",
        f"float_trainer.max_steps_per_epoch={min(steps, 4)}",
        "float_predictor=null",
        "vars.val_callback.val_on_train_end=false",
        "vars.val_callback.val_interval=1000",
        "data_loader.num_workers=0",
        "vars.stat_callback.log_freq=1",
        # the demo trains in one process; the seed's config (fcos_b0.yaml) uses these
        "float_trainer.type=distributed_data_parallel_trainer",
        "float_trainer.sync_bn=true",
        "data_loader.sampler={type: DistributedSampler}",
    ]


def _start_node(
    node: int, port: int, data: Path, tmp: Path, steps: int, extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    node_dir = tmp / f"node{node}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
        "OMP_NUM_THREADS": "1",
        "FCOS_PROGRESS": "0",
        "GLOO_SOCKET_IFNAME": "lo",
        "FCOS_TEST_WEIGHTS_DIR": str(tmp / "weights"),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--node-rank",
        str(node),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        f"fcos-test-{port}",
        # node 0 hosts the rendezvous store, so killing node 1 leaves node 0's launcher able
        # to report its training process's error
        "--rdzv-conf",
        f"is_host={int(node == 0)}",
        "--max-restarts",
        "0",
        "--monitor-interval",
        "0.2",
        "--local-addr",
        "127.0.0.1",
        "-m",
        "multinode_child",
        "run",
        str(DEMO),
        "--stage",
        "float",
        "--run-dir",
        str(node_dir / "run"),
        *_overrides(data, node_dir, steps),
        *extra,
    ]
    out = open(tmp / f"node{node}.out", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True
    )
    proc.log_path = tmp / f"node{node}.out"  # type: ignore[attr-defined]
    out.close()
    return proc


def _start_two_nodes(
    data: Path, tmp: Path, steps: int, extra: tuple[str, ...] = ()
) -> list[subprocess.Popen]:
    (tmp / "weights").mkdir(exist_ok=True)
    port = _free_port()
    first = _start_node(0, port, data, tmp, steps, extra)
    time.sleep(1.0)  # node 0 binds the store first (is_host also says so)
    return [first, _start_node(1, port, data, tmp, steps, extra)]


def _output(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined]


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (torchrun starts its workers in new sessions)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_node(proc: subprocess.Popen) -> None:
    for pid in [proc.pid, *_children(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            _kill_node(p)


def _train_steps(log: Path) -> int:
    if not log.is_file():
        return 0
    return sum(
        1
        for line in log.read_text().splitlines()
        if line.strip().endswith("}") and json.loads(line).get("event") == "train"
    )


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_nodes_end_with_identical_weights_and_rank_zero_writes(demo_data, tmp_path):
    procs = _start_two_nodes(demo_data, tmp_path, steps=3)
    try:
        for p in procs:
            assert p.wait(timeout=200) == 0, _output(p)[-3000:]
    finally:
        _stop_all(procs)
    a = torch.load(tmp_path / "weights" / "float-rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "weights" / "float-rank1.pt", weights_only=True)
    assert a.keys() == b.keys() and len(a) > 100
    for name in a:  # DDP: same start (rank 0's weights broadcast), same averaged gradients
        assert torch.equal(a[name], b[name]), name
    # exactly one node holds files: the one whose process was global rank 0
    writers = [n for n in (0, 1) if (tmp_path / f"node{n}").exists()]
    assert len(writers) == 1, writers
    node = tmp_path / f"node{writers[0]}"
    files = _tree(node)
    assert {
        "ckpt/float-checkpoint-last.pth.tar",
        "ckpt/float-checkpoint-best.pth.tar",
        "run/log.jsonl",
        "run/metrics.csv",
        "run/summary.json",
    } <= set(files), files
    ckpt = torch.load(node / "ckpt" / "float-checkpoint-last.pth.tar", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["global_step"] == 3
    for name, value in ckpt["train_state_dict"].items():  # the checkpoint is those weights
        assert torch.equal(value, a[name]), name
    records = [json.loads(line) for line in (node / "run" / "log.jsonl").read_text().splitlines()]
    assert {r.get("rank", 0) for r in records} == {0}
    assert any(r.get("event") == "DDP" and r.get("world_size") == 2 for r in records)
    assert _train_steps(node / "run" / "log.jsonl") == 3


def _wait_for_steps(procs: list[subprocess.Popen], tmp: Path, steps: int) -> int:
    """The node whose run folder (global rank 0) has logged ``steps`` training steps."""
    deadline = time.monotonic() + 150
    while True:
        for n in (0, 1):
            if _train_steps(tmp / f"node{n}" / "run" / "log.jsonl") >= steps:
                return n
        for p in procs:
            assert p.poll() is None, _output(p)[-3000:]
        assert time.monotonic() < deadline, "the two nodes made no progress"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_killed_node_ends_the_other_with_a_clear_error(demo_data, tmp_path):
    procs = _start_two_nodes(demo_data, tmp_path, steps=500)
    try:
        _wait_for_steps(procs, tmp_path, 2)
        _kill_node(procs[1])
        t0 = time.monotonic()
        code = procs[0].wait(timeout=120)
        waited = time.monotonic() - t0
    finally:
        _stop_all(procs)
    out = _output(procs[0])
    assert code != 0, out[-3000:]
    assert PEER_LOST in out and "--resume" in out, out[-3000:]
    assert "dist_timeout_s" in out
    # a peer that exits closes its sockets: noticed at the next collective, not after the
    # process-group timeout (30 minutes by default)
    assert waited < 60, waited


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_silent_node_is_waited_for_dist_timeout_s(demo_data, tmp_path):
    timeout_s = 8
    procs = _start_two_nodes(demo_data, tmp_path, steps=500, extra=(f"dist_timeout_s={timeout_s}",))
    frozen: list[int] = []
    try:
        _wait_for_steps(procs, tmp_path, 2)
        # node 1 hangs (as a machine that lost its network): its processes stop running but
        # keep their sockets open, so node 0 only learns of it from the timeout
        frozen = [procs[1].pid, *_children(procs[1].pid)]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        code = procs[0].wait(timeout=150)
        waited = time.monotonic() - t0
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        _stop_all(procs)
    out = _output(procs[0])
    assert code != 0, out[-3000:]
    assert PEER_LOST in out and f"dist_timeout_s = {timeout_s} s" in out, out[-3000:]
    assert timeout_s - 1 <= waited < timeout_s + 60, waited
