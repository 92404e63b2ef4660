"""One deploy table: the compiled artifact next to the fcos integer model, for every backend.

After ``backend.compile`` the compile stage runs the checks of this module through the
backend contract alone (``load`` and ``run``; :mod:`fcos_core.compile.backend`), so a new
backend gets them without code of its own:

* **agreement** -- the integer model (the quantized deploy model, in torch) and the artifact
  (``backend.run``) on the same inputs: up to ``check_images`` validation images of the
  compiled size, one at a time (else the example input), compared element by element in
  integer steps of each output's quantization (:mod:`fcos_core.compile.agreement`);
* **latency** -- p50 / p90 wall time of ``backend.run`` on one batch-1 input, warm-up runs
  excluded, with the thread budget stated; the integer model is timed the same way;
* **accuracy** -- COCO numbers of the artifact through its own runtime (``backend.detect``,
  in :mod:`fcos_core.engine.compile_stage`) next to the integer model's.

The rule (:func:`fcos_core.compile.agreement.disagreement`): more than 0.1 % of the compared
codes beyond one step fails the stage; ``compile_cfg.allow_disagreement: true`` (``fcos compile
--allow-disagreement``) keeps the artifact with a warning.

The options schema and :data:`CHECK_KEYS` are torch-free (config validation imports them);
everything else imports torch lazily.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from fcos_core.errors import FcosUserError
from fcos_core.schema import arg, fields_of


@attrs.frozen(kw_only=True)
class DeployCheckOptions:
    """Checks of the compiled artifact that hold for every backend (``compile_cfg`` keys next to
    the backend's own options)."""

    allow_disagreement: bool = arg(
        False,
        help="when more than 0.1 % of the artifact's output codes are more than one "
        "quantization step from the fcos integer model's: false fails the compile "
        "stage (artifact, table and report stay for inspection), true only warns "
        "(also: fcos compile --allow-disagreement)",
    )
    check_images: int = arg(
        8,
        help="validation images (batch 1, at the compiled input size) the artifact and the "
        "integer model are compared on; 0, or no validation data: the example input",
    )
    timing_runs: int = arg(
        20,
        help="timed batch-1 runs of the artifact's runtime (and of the integer model) for "
        "the deploy table's p50/p90 latency; 0 skips timing",
    )
    timing_warmup: int = arg(3, help="untimed runs before the timed ones")


#: the ``compile_cfg`` keys fcos core owns (every backend's compile stage honours them)
CHECK_KEYS: tuple[str, ...] = tuple(fields_of(DeployCheckOptions))

#: columns of the table, in order (the CSV has these plus ``artifact`` and ``inputs``)
COLUMNS: tuple[str, ...] = (
    "backend",
    "mAP",
    "AP50",
    "within_0",
    "within_1",
    "max_steps",
    "worst_output",
    "p50_ms",
    "p90_ms",
    "threads",
)


#: the first row: the fcos integer model, the reference of the agreement columns; its label
#: names the march, whose quantization rules it was built with (see :func:`reference_label`)
REFERENCE = "integer model"


def reference_label(march: str) -> str:
    """``integer model (<march>)``: the integer model differs between marches (their
    quantization rules), so each backend's row pair in a run folder's table keeps its own."""
    return f"{REFERENCE} ({march})"


def check_options(compile_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The :class:`DeployCheckOptions` of a config's ``compile_cfg`` (defaults filled in);
    a negative count is a user error."""
    fields = fields_of(DeployCheckOptions)
    opts = {name: info.default for name, info in fields.items()}
    opts.update({k: v for k, v in (compile_cfg or {}).items() if k in fields})
    opts["allow_disagreement"] = bool(opts["allow_disagreement"])
    for key in ("check_images", "timing_runs", "timing_warmup"):
        if isinstance(opts[key], bool) or not isinstance(opts[key], int) or opts[key] < 0:
            raise FcosUserError(
                f"compile_cfg.{key} must be an integer >= 0, got {opts[key]!r}",
                hint=f"set compile_cfg.{key}: 0 or more",
            )
    return opts


# -- outputs ------------------------------------------------------------------------------


def integer_body(model: Any) -> Any | None:
    """The ``IntegerModel`` of a quantized deploy model (the model itself or its ``body``);
    None for a model that is not quantized."""
    from fcos_core.quantization.integer_model import IntegerModel

    if isinstance(model, IntegerModel):
        return model
    body = getattr(model, "body", None)
    return body if isinstance(body, IntegerModel) else None


def output_names(n_body: int, strides: Sequence[int] | None, n_extra: int) -> list[str]:
    """Readable output names: ``cls_8.., box_8.., ctr_8..`` for an FCOS body with strides
    (``out_i`` otherwise), then ``max_logit_8..`` for the compile post-process's outputs."""
    st = [int(s) for s in strides or []]
    if st and n_body == 3 * len(st):
        names = [f"{kind}_{s}" for kind in ("cls", "box", "ctr") for s in st]
    else:
        names = [f"out_{i}" for i in range(n_body)]
    if st and n_extra == len(st):
        return names + [f"max_logit_{s}" for s in st]
    return names + [f"out_{n_body + i}" for i in range(n_extra)]


def output_specs(model: Any, n_outputs: int) -> list[dict[str, Any]]:
    """``{name, scale, zero_point}`` per output of the deploy model, for
    :class:`~fcos_core.compile.agreement.AgreementTally`.

    The body's outputs take the integer model's output scales (per tensor, or per channel for
    an int32 output). Outputs after them are the compile post-process's per-stride maxima over
    the classes of the matching ``cls`` output: same scale when that one is per tensor, else
    not comparable in steps (no scale). A model that is not quantized has no steps at all.
    """
    from fcos_core.compile.backend import post_process_params

    int_model = integer_body(model)
    params = post_process_params(model)
    strides = params["strides"] if params else None
    if int_model is None:
        return [{"name": n, "scale": [], "zero_point": 0} for n in output_names(n_outputs, None, 0)]
    scales = [
        [float(v) for v in s.detach().double().reshape(-1).tolist()]
        for s in int_model.output_scales()
    ]
    n_body = len(scales)
    extra = n_outputs - n_body
    if extra < 0:
        raise FcosUserError(
            f"the deploy model returns {n_outputs} outputs but its integer model has {n_body}",
            hint="compile the model as the int_infer stage builds it",
        )
    names = output_names(n_body, strides, extra)
    specs = [{"name": names[i], "scale": scales[i], "zero_point": 0} for i in range(n_body)]
    maxima = bool(strides) and extra == len(strides or [])
    for k in range(extra):
        scale = scales[k] if maxima and len(scales[k]) == 1 else []
        specs.append({"name": names[n_body + k], "scale": scale, "zero_point": 0})
    return specs


# -- inputs -------------------------------------------------------------------------------


def comparison_images(loaders: Sequence[Any], example: Any, limit: int) -> tuple[list[Any], str]:
    """Up to ``limit`` single images ``[1, 3, H, W]`` from the first batches of ``loaders``
    whose size equals the ``example`` batch's (the compiled size); when there are none, the
    example batch itself. Returns the images and a phrase saying what they are."""
    images: list[Any] = []
    hw = tuple(example.shape[-2:])
    other: set[tuple[int, int]] = set()
    for loader in loaders:
        if len(images) >= limit:
            break
        for batch in loader:
            img = batch["img"] if isinstance(batch, Mapping) else batch
            if tuple(img.shape[-2:]) != hw:
                other.add(tuple(int(v) for v in img.shape[-2:]))
                break
            for i in range(int(img.shape[0])):
                if len(images) >= limit:
                    break
                images.append(img[i : i + 1].float())
            if len(images) >= limit:
                break
    if images:
        return images, f"{len(images)} validation image(s) at {hw[0]}x{hw[1]}"
    why = (
        f" (validation images are {sorted(other)[0][0]}x{sorted(other)[0][1]}, the "
        f"artifact {hw[0]}x{hw[1]})"
        if other
        else ""
    )
    return [example[:1].float()], f"the example input at {hw[0]}x{hw[1]}{why}"


def feed_pair(x: Any, pyramid: bool) -> tuple[Any, Any]:
    """``(artifact input, integer model input)`` of a normalised image ``x``: the same tensor,
    or for a pyramid input (``compile_cfg.input_source: [pyramid]``) the uint8 frame
    ``round(x * 128 + 128)`` and the model's exact ``(frame - 128) / 128``."""
    import torch

    if not pyramid:
        return x, x
    raw = torch.clamp(torch.round(x * 128.0 + 128.0), 0, 255).to(torch.uint8)
    return raw.numpy(), (raw.float() - 128.0) / 128.0


def _as_tuple(outputs: Any) -> tuple[Any, ...]:
    if isinstance(outputs, Mapping):
        return tuple(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return tuple(outputs)
    return (outputs,)


# -- measurements -------------------------------------------------------------------------


def measure_agreement(
    backend: Any, program: Any, model: Any, images: Sequence[Any], input_name: str, pyramid: bool
) -> dict[str, Any]:
    """Integer model vs ``backend.run(program, ...)`` on each image (batch 1); the merged
    agreement of :class:`~fcos_core.compile.agreement.AgreementTally` plus ``images``."""
    import torch

    from fcos_core.compile.agreement import AgreementTally

    tally: AgreementTally | None = None
    for x in images:
        feed, model_in = feed_pair(x, pyramid)
        with torch.no_grad():
            ref = _as_tuple(model(model_in))
        got = _as_tuple(backend.run(program, {input_name: feed}))
        if len(got) != len(ref):
            raise FcosUserError(
                f"compile: the artifact's runtime returned {len(got)} outputs, the deploy "
                f"model {len(ref)}",
                hint="a backend's run() returns the deploy model's "
                "outputs in order (fcos_core.compile.backend)",
            )
        if tally is None:
            tally = AgreementTally(output_specs(model, len(ref)))
        tally.add(ref, got)
    out = tally.result() if tally is not None else {"elements": 0}
    out["images"] = len(images)
    return out


def thread_budget(program: Any = None) -> int:
    """The threads a runtime uses: the loaded program's own ``threading["threads"]`` where it
    states one (e.g. an ONNX Runtime session), else the process's budget
    (:func:`fcos_core.compile.latency.default_threads`)."""
    from fcos_core.compile.latency import default_threads

    threading = getattr(program, "threading", None)
    if isinstance(threading, Mapping) and isinstance(threading.get("threads"), int):
        return int(threading["threads"])
    return default_threads()


def measure_runtime(
    run: Callable[[], Any], runs: int, warmup: int, threads: int
) -> dict[str, Any] | None:
    """Batch-1 latency of ``run`` (None when ``runs`` is 0) with the threads stated."""
    from fcos_core.compile.latency import measure_latency

    if runs <= 0:
        return None
    return {"batch": 1, "threads": int(threads), **measure_latency(run, runs, warmup)}


# -- the table ----------------------------------------------------------------------------


def table_row(
    backend: str,
    metrics: Mapping[str, Any] | None,
    agreement: Mapping[str, Any] | None,
    latency: Mapping[str, Any] | None,
    artifact: str = "",
    inputs: str = "",
) -> dict[str, Any]:
    """One row of the table (None where a value was not measured)."""
    metrics = metrics or {}
    agr = agreement if agreement and agreement.get("elements") else None
    return {
        "backend": backend,
        "mAP": _num(metrics.get("mAP")),
        "AP50": _num(metrics.get("AP50")),
        "within_0": agr["within_0"] if agr else None,
        "within_1": agr["within_1"] if agr else None,
        "max_steps": agr["max_steps"] if agr else None,
        "worst_output": agr.get("worst_output") if agr else None,
        "p50_ms": latency["p50_ms"] if latency else None,
        "p90_ms": latency["p90_ms"] if latency else None,
        "threads": latency["threads"] if latency else None,
        "artifact": artifact,
        "inputs": inputs,
    }


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _cell(key: str, v: Any, reference: bool = False) -> str:
    if reference and key in ("within_0", "within_1", "max_steps", "worst_output"):
        return "ref"
    if v is None:
        return "-"
    if key in ("mAP", "AP50"):
        return f"{v:.4f}"
    if key in ("within_0", "within_1"):
        return f"{v * 100:.3f}%"
    if key in ("p50_ms", "p90_ms"):
        return f"{v:.2f}"
    return str(v)


HEADERS = {
    "backend": "backend",
    "mAP": "mAP",
    "AP50": "AP50",
    "within_0": "within-0",
    "within_1": "within-1",
    "max_steps": "max diff",
    "worst_output": "worst output",
    "p50_ms": "p50 ms",
    "p90_ms": "p90 ms",
    "threads": "threads",
}


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as an aligned text table (``-``: not measured; agreement is counted in
    quantization steps against the integer model, marked ``ref``)."""
    grid = [[HEADERS[k] for k in COLUMNS]] + [
        [_cell(k, r.get(k), str(r.get("backend", "")).startswith(REFERENCE)) for k in COLUMNS]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in grid) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(
            c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))
        ).rstrip()
        for line in grid
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write the table to ``path``, keeping the rows of other backends already there (one
    table per run folder, whatever march each ``--stage compile`` ran); rows with the same
    ``backend`` label (this backend and its integer model) are replaced. Written atomically."""
    fields = [*COLUMNS, "artifact", "inputs"]
    new = {str(r["backend"]) for r in rows}
    kept: list[dict[str, Any]] = []
    if path.is_file():
        try:
            with path.open(newline="", encoding="utf-8") as f:
                kept = [r for r in csv.DictReader(f) if r.get("backend") not in new]
        except (OSError, csv.Error, UnicodeDecodeError):
            kept = []  # an unreadable table of ours is rewritten
    from fcos_core.atomic_write import write_atomically

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in [*kept, *rows]:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    data = buf.getvalue().encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda f: f.write(data))
