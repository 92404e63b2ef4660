"""``fcos run``: the stage pipeline float -> calibration -> qat -> int_infer -> compile.

For each requested stage, in pipeline order:

1. a stage whose ``<stage>_trainer`` block is absent (or, for ``compile``, without
   ``compile_cfg``) is skipped with a note;
2. the trainer is built from the config and run; its model_convert_pipeline loads the previous
   stage's checkpoint where the config's ``LoadCheckpoint`` says (a missing file names the stage
   that writes it);
3. ``<stage>_predictor``, when configured, evaluates the result;
4. the stage's numbers go to ``summary.json``: the predictor's metrics, else the trainer's last
   validation; the stage's checkpoint is its ``best`` file (else ``last``).

The run folder (default ``runs/<task_name>``, or ``--run-dir``) gets ``config.resolved.yaml``,
``log.jsonl``, ``metrics.csv``, ``loss.png`` / ``lr.png`` / ``map.png`` and ``summary.json``;
checkpoints go to the config's ``ckpt_dir``. The run ends with a table (stage, mAP, time,
checkpoint). In distributed runs rank 0 writes the files.

Each stage re-seeds the global generators with the config's ``seed`` before it builds anything,
so running a stage alone gives what it gives inside ``--stage all``.

Before anything is trained (see :mod:`fcos_core.engine.run_guard`): ``ckpt_dir`` and the run
folder must be writable (exit 2 naming the path and the cause otherwise); ``ckpt_dir/.fcos.lock``
is locked for the whole run (a second run on the same ``ckpt_dir`` exits 2); and when a stage to
be trained already has checkpoints, the run needs ``--resume`` (continue them) or
``--overwrite`` (replace them), else it exits 2 listing them -- before touching the run folder.
Checkpoints a stage writes during this same run (``--stage all``: float's, read by calibration)
are of course used. SIGTERM is handled like Ctrl-C (the ``last`` checkpoint is saved; exit code
143). A trainer's count of steps skipped for a NaN/inf gradient goes to ``summary.json`` as the
stage's ``nonfinite_grad_steps``; what callbacks put in ``RunContext.summary_extra`` (the
``TrainingHealth`` callback's ``health_warnings``) is added to the stage's entry.

In a distributed run (torchrun), a process that exits or stops answering stops the others at
their next collective with :class:`~fcos_core.engine.errors.PeerLostError` (exit code 2, one
line, no traceback); a silent peer is waited for the config's ``dist_timeout_s`` seconds.
"""

from __future__ import annotations

import gc
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fcos_core.config.run_config import STAGES
from fcos_core.engine import distributed
from fcos_core.engine.context import RunContext
from fcos_core.engine.errors import PeerLostError
from fcos_core.engine.recorder import MetricsRecorder
from fcos_core.engine.run_guard import (
    RunLock,
    existing_checkpoints,
    os_error_text,
    probe_writable,
    refuse_to_replace,
    sigterm_as_interrupt,
    stage_checkpoint_paths,
)
from fcos_core.engine.summary import format_table, load_summary, write_summary
from fcos_core.errors import FcosUserError
from fcos_core.logging_setup import configure_logging, get_logger


def _write_resolved_config(run_dir: Path, data: dict[str, Any]) -> None:
    from fcos_core.atomic_write import write_atomically

    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    # a unique temp name: two runs sharing a run folder never write into the same temp file
    write_atomically(run_dir / "config.resolved.yaml", lambda f: f.write(text.encode("utf-8")))


def _preflight(
    cfg: Any, stages: Sequence[str], run_dir: Path, ckpt_dir: Path, resume: bool, overwrite: bool
) -> RunLock:
    """Rank 0's checks before any training (module docstring); returns the held lock."""
    probe_writable(
        ckpt_dir, "checkpoint folder (ckpt_dir)", "set ckpt_dir=FOLDER to a writable folder"
    )
    lock = RunLock(ckpt_dir).acquire()
    try:
        probe_writable(run_dir, "run folder", "pass --run-dir FOLDER with a writable folder")
        trained = [s for s in stages if s != "compile" and cfg.node(f"{s}_trainer") is not None]
        others = {p.parent for s in trained for p in stage_checkpoint_paths(cfg, s, ckpt_dir)}
        for folder in sorted(others - {ckpt_dir}, key=str):
            probe_writable(
                folder,
                "checkpoint folder (a Checkpoint callback's save_dir)",
                "set that save_dir to a writable folder",
            )
        if not resume and not overwrite:
            refuse_to_replace(existing_checkpoints(cfg, trained, ckpt_dir))
    except BaseException:
        lock.release()
        raise
    return lock


def _user_path_error(exc: OSError) -> FcosUserError:
    return FcosUserError(
        f"cannot write or read {str(exc.filename)!r}: {os_error_text(exc)}",
        hint="free disk space or fix the path's permissions; continue with "
        "--resume from the last checkpoint",
    )


def _stage_checkpoint(trainer: Any, ctx: RunContext) -> str | None:
    candidates: list[Path] = []
    for cb in getattr(trainer, "callbacks", []):
        if hasattr(cb, "best_path") and hasattr(cb, "last_path"):
            candidates += [cb.best_path(trainer), cb.last_path(trainer)]
    candidates += [
        ctx.ckpt_dir / f"{ctx.stage}-checkpoint-best.pth.tar",
        ctx.ckpt_dir / f"{ctx.stage}-checkpoint-last.pth.tar",
    ]
    for path in candidates:
        if path.is_file():
            return str(path)
    return None


def make_backend(cfg: Any, log: Any) -> Any:
    """The compile backend object for the converters' quantization rules (None without one)."""
    if cfg.compile_backend is None:
        return None
    try:
        return cfg.compile_backend.load()()
    except Exception as exc:  # noqa: BLE001 - training must not depend on the backend
        log.warning(
            "the compile backend could not be created; converters use fcos's default "
            "quantization rules",
            backend=cfg.compile_backend.name,
            error=str(exc),
        )
        return None


def _dist_timeout(data: dict[str, Any]) -> float:
    """The config's ``dist_timeout_s`` (the process-group timeout), checked."""
    value = data.get("dist_timeout_s", distributed.DEFAULT_TIMEOUT_S)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise FcosUserError(
            f"dist_timeout_s is {value!r}; it must be a number of seconds > 0",
            hint="set dist_timeout_s=1800 (the default) or another positive "
            "number in the config or on the command line",
        )
    return float(value)


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_pipeline(
    cfg: Any,
    host: Any,
    stages: Sequence[str],
    run_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> int:
    """Run ``stages`` of the resolved config ``cfg``; returns the exit code (0).

    ``resume``: continue each stage from its ``last`` checkpoint; ``overwrite``: train again
    and replace existing checkpoints. With neither, existing checkpoints of a stage to train
    stop the run before anything is written (see the module docstring).
    """
    if resume and overwrite:
        raise FcosUserError(
            "--resume and --overwrite exclude each other",
            hint="--resume continues from the existing checkpoints; "
            "--overwrite trains again and replaces them",
        )
    data = cfg.data
    rank, world, local_rank = distributed.env_world()
    timeout_s = _dist_timeout(data)
    started_group = distributed.init_from_env(timeout_s) and world > 1
    folder = Path(run_dir) if run_dir else Path("runs") / str(data["task_name"])
    ckpt_dir = Path(data["ckpt_dir"])
    lock: RunLock | None = None
    error: FcosUserError | None = None
    if rank == 0:
        try:
            lock = _preflight(cfg, stages, folder, ckpt_dir, resume, overwrite)
        except FcosUserError as exc:
            error = exc
    # every rank stops, not only rank 0
    problem = distributed.broadcast_object(None if error is None else (error.message, error.hint))
    if problem is not None:
        if started_group:
            distributed.destroy()
        raise error if error is not None else FcosUserError(*problem)
    try:
        with sigterm_as_interrupt():
            return _run_stages(
                cfg, stages, folder, ckpt_dir, resume, overwrite, rank, world, local_rank
            )
    except OSError as exc:
        if exc.filename is None:
            raise
        raise _user_path_error(exc) from exc
    except Exception as exc:
        # another process died or went silent: one clear line on every survivor, no traceback
        if started_group and distributed.is_peer_failure(exc):
            raise PeerLostError(
                rank, world, distributed.backend_name(), timeout_s, str(exc)
            ) from exc
        raise
    finally:
        if lock is not None:
            lock.release()
        if started_group:
            distributed.destroy()


def _run_stages(
    cfg: Any,
    stages: Sequence[str],
    folder: Path,
    ckpt_dir: Path,
    resume: bool,
    overwrite: bool,
    rank: int,
    world: int,
    local_rank: int,
) -> int:
    from fcos_core.build import build
    from fcos_core.engine.compile_stage import run_compile_stage
    from fcos_core.engine.runtime import apply_runtime_settings, seed_everything

    data = cfg.data
    configure_logging(folder, rank, bool(data.get("log_rank_zero_only", True)), world_size=world)
    log = get_logger("fcos.pipeline")
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        _write_resolved_config(folder, data)
        if overwrite:
            trained = [s for s in stages if s != "compile"]
            replaced = existing_checkpoints(cfg, trained, ckpt_dir)
            if replaced:
                log.warning(
                    "--overwrite: these checkpoints are replaced as the stages save",
                    files=[str(p) for p in replaced],
                )
    apply_runtime_settings(data)
    seed = data.get("seed")
    if seed is None:  # one seed for the whole run, shared by all ranks
        seed = distributed.broadcast_object(secrets.randbits(31))
        fixed = False
    else:
        fixed = True
    recorder = MetricsRecorder(folder, enabled=rank == 0)
    recorder.load()
    summary = load_summary(folder) if rank == 0 else {}
    log.info(
        "run",
        config=cfg.file,
        run_dir=str(folder),
        stages=",".join(stages),
        resume=resume,
        overwrite=overwrite,
        world_size=world,
        seed=seed if fixed else f"{seed} (drawn)",
    )
    backend = make_backend(cfg, log)
    deploy_inputs = data.get("deploy_inputs") or {"img": [1, 3, 512, 512]}
    try:
        for stage in [s for s in STAGES if s in stages]:
            ctx = RunContext(
                stage=stage,
                run_dir=folder,
                ckpt_dir=ckpt_dir,
                logger=get_logger(f"fcos.{stage}"),
                seed=seed,
                deterministic=bool(data.get("deterministic", False)),
                resume=resume,
                config=cfg,
                rank=rank,
                world_size=world,
                local_rank=local_rank,
                example_inputs=deploy_inputs,
                recorder=recorder,
                backend=backend,
                channels_last=bool(data.get("channels_last", True)),
            )
            t0 = time.perf_counter()
            seed_everything(seed)
            if stage == "compile":
                if rank != 0:
                    continue
                out = run_compile_stage(cfg, ctx)
                if out is None:
                    log.info("stage skipped: the config has no compile_cfg", stage=stage)
                    continue
                summary[stage] = {
                    "metrics": out.get("metrics") or {},
                    "seconds": time.perf_counter() - t0,
                    "checkpoint": out["out_dir"],
                    "source": None,
                }
                summary[stage].update(ctx.summary_extra)  # the artifact's per-class results
                write_summary(folder, summary)
                continue
            node = cfg.node(f"{stage}_trainer")
            if node is None:
                log.info(f"stage skipped: the config has no {stage}_trainer block", stage=stage)
                continue
            if not resume:
                recorder.drop_stage(stage)
            log.info("stage", stage=stage, trainer=node.entry.name)
            trainer = build(node)
            results = trainer.run(ctx)
            source = "validation" if results else None
            checkpoint = _stage_checkpoint(trainer, ctx)
            skipped = getattr(trainer, "nonfinite_steps", None)
            del trainer
            _free_memory()
            pred_node = cfg.node(f"{stage}_predictor")
            if pred_node is not None:
                seed_everything(seed)
                predictor = build(pred_node)
                results = predictor.run(ctx)
                source = "predictor"
                del predictor
                _free_memory()
            seconds = time.perf_counter() - t0
            log.info(
                "stage done",
                stage=stage,
                seconds=round(seconds, 1),
                checkpoint=checkpoint,
                **{k: round(v, 4) for k, v in results.items()},
            )
            if rank == 0:
                summary[stage] = {
                    "metrics": results,
                    "seconds": seconds,
                    "checkpoint": checkpoint,
                    "source": source,
                }
                if skipped is not None:
                    summary[stage]["nonfinite_grad_steps"] = int(skipped)
                summary[stage].update(ctx.summary_extra)  # e.g. TrainingHealth's warnings
                write_summary(folder, summary)
                recorder.flush()
            distributed.barrier()
        if rank == 0:
            table = format_table(summary, tuple(STAGES))
            print(table, flush=True)
            log.info("summary", table="\n" + table, summary=str(folder / "summary.json"))
    finally:
        if rank == 0:  # also after a failure: the numbers so far are worth a look
            try:
                recorder.flush()
                recorder.plot()
            except OSError as exc:  # must not hide the error that got us here
                log.warning(
                    "could not write metrics.csv / the plots",
                    error=os_error_text(exc),
                    path=str(exc.filename or folder),
                )
    return 0
