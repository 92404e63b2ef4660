"""Kernel (system) time of a small-data training run: where it went and what fcos does about it.

Runs ``fcos run CONFIG --stage float`` as a user would (own-data recipe, 384x384, batch 8, the
nuclei set of tools/make_nuclei_coco.py or ``--data``) under variants, each a fresh process
whose resource usage (``wait4``: user and system CPU seconds, minor page faults, context
switches, its DataLoader workers included) is reported with the ratio of system to user time:

* ``shipped``     -- fcos as configured: DataLoader workers are kept between epochs;
* ``fork/epoch``  -- ``persistent_workers: false`` on both loaders, what fcos did before: every
  epoch and every validation forks the training process again, and afterwards every page the
  parent writes to is copied on first touch (a copy-on-write fault);
* ``no workers``  -- ``num_workers: 0`` (loading in the training process).

The baseline of the ratio column is ``fork/epoch`` measured in the same run. One data loader
worker, as the configs ship; ``OMP_WAIT_POLICY=PASSIVE``.

Usage::

    python benchmarks/bench_sys_time.py [--data DIR] [--epochs 20] [--size 384] [--batch 8]
                                        [--threads 2] [--quick]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_real_data import data_layout, ensure_nuclei  # noqa: E402

VARIANTS = {
    "shipped": [],
    "fork/epoch": [
        "data_loader.persistent_workers=false",
        "val_data_loader.persistent_workers=false",
    ],
    "no workers": ["data_loader.num_workers=0", "val_data_loader.num_workers=0"],
}


def run(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    with open(log, "w") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"error: {' '.join(cmd)} failed; see {log}:\n{log.read_text()[-2000:]}")
    return {
        "wall": wall,
        "user": ru.ru_utime,
        "sys": ru.ru_stime,
        "minflt": ru.ru_minflt,
        "nvcsw": ru.ru_nvcsw,
        "nivcsw": ru.ru_nivcsw,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default=str(ROOT / "configs" / "fcos_b0_custom.yaml"))
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 epochs at 128")
    ns = ap.parse_args()
    if ns.quick:
        ns.epochs, ns.size = 3, 128
    env = dict(os.environ, OMP_NUM_THREADS=str(ns.threads))
    with tempfile.TemporaryDirectory(prefix="fcos-bench-sys-") as tmp:
        work = Path(tmp)
        paths = data_layout(ns.data if ns.data else ensure_nuclei(work))
        import json

        ncls = len(json.loads(paths["train_json"].read_text())["categories"])
        for split in ("train", "val"):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "fcos_core",
                    "pack-coco",
                    "--images",
                    str(paths[f"{split}_images"]),
                    "--ann",
                    str(paths[f"{split}_json"]),
                    "--out",
                    str(work / "data" / f"{split}_lmdb"),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                env=env,
            )
        rows = {}
        for name, extra in VARIANTS.items():
            tag = name.replace("/", "_").replace(" ", "_")
            cmd = [
                sys.executable,
                "-m",
                "fcos_core",
                "run",
                ns.config,
                "--stage",
                "float",
                "--run-dir",
                str(work / tag),
                f"ckpt_dir={work / tag / 'ckpt'}",
                f"vars.data_root={work / 'data'}",
                f"vars.val_ann_file={paths['val_json']}",
                f"vars.num_classes={ncls}",
                f"vars.num_classes_with_background={ncls + 1}",
                f"vars.input_size={ns.size}",
                f"vars.batch_size_per_gpu={ns.batch}",
                f"float_trainer.num_epochs={ns.epochs}",
                *extra,
            ]
            rows[name] = run(cmd, env, work / f"{tag}.log")
            print(f"[{name}] {rows[name]}", flush=True)
    base = rows["fork/epoch"]
    print(
        f"\nfloat stage, {ns.epochs} epochs at {ns.size}x{ns.size}, batch {ns.batch}, "
        f"{ns.threads} threads"
    )
    print(
        f"{'variant':<11} {'wall s':>7} {'user s':>7} {'sys s':>7} {'sys/user':>8} "
        f"{'minor faults':>12} {'wall vs fork/epoch':>19}"
    )
    for name, r in rows.items():
        print(
            f"{name:<11} {r['wall']:>7.1f} {r['user']:>7.1f} {r['sys']:>7.1f} "
            f"{r['sys'] / r['user']:>8.2f} {r['minflt']:>12,} "
            f"{base['wall'] / r['wall']:>18.2f}x"
        )


if __name__ == "__main__":
    main()
