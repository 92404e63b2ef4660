"""What a compile backend (``register_compile_backends``) provides.

A backend is selected by the config's ``march`` and is the one place that knows the target:

* :meth:`CompileBackend.quantization_rules` -- the dtypes and shared-scale rules the
  quantization flow must follow for this target (None: fcos's defaults).
* :meth:`CompileBackend.check` -- can this (float or quantized) deploy model compile? One
  :class:`CheckIssue` per unsupported layer, naming the layer and the reason. ``fcos check
  CONFIG --model`` calls it before any training, as HAT's model checker does.
* :meth:`CompileBackend.compile` -- quantized deploy model + example inputs + the validated
  ``compile_cfg`` options -> one artifact file and a report.
* :meth:`CompileBackend.load` / :meth:`CompileBackend.run` -- execute an artifact on this
  machine; outputs have the deploy model's output structure.
* optional: :meth:`CompileBackend.detect` (decoded detections of an artifact, to score it) and
  :meth:`CompileBackend.artifact_path` (where :meth:`CompileBackend.compile` puts the artifact).

The module is torch-free so registration stays cheap; implementations import torch lazily.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class CheckIssue:
    """One reason a model cannot compile."""

    layer: str  # qualified module / graph node name
    op: str  # operator as the backend sees it
    reason: str  # what is wrong and, where possible, how to fix it

    def render(self) -> str:
        return f"{self.layer} ({self.op}): {self.reason}"


@attrs.frozen
class CompileResult:
    """What :meth:`CompileBackend.compile` produced."""

    artifact: Path  # the single compiled file
    report: dict[str, Any]  # summary: layers, MACs, parameters, estimated latency ...
    files: tuple[Path, ...] = ()  # extra files written (per-layer JSON, HTML report ...)


class CompileBackend(abc.ABC):
    """Base class for compile backends; see the module docstring for the contract."""

    #: the ``march`` name this backend answers to
    name: str = ""

    def quantization_rules(self) -> Any:
        """Quantization rules for this target, or None for fcos's defaults."""
        return None

    @abc.abstractmethod
    def check(self, model: Any, example_inputs: Mapping[str, Any]) -> Sequence[CheckIssue]:
        """Every reason ``model`` cannot compile for this target (empty: it can)."""

    @abc.abstractmethod
    def compile(
        self,
        model: Any,
        example_inputs: Mapping[str, Any],
        options: Mapping[str, Any],
        out_dir: Path,
    ) -> CompileResult:
        """Compile a quantized deploy model; ``options`` are the validated compile_cfg."""

    @abc.abstractmethod
    def load(self, artifact: Path) -> Any:
        """Read and verify an artifact; raise FcosUserError for a damaged or foreign file."""

    @abc.abstractmethod
    def run(self, program: Any, inputs: Mapping[str, Any]) -> Any:
        """Execute a loaded artifact on ``inputs``; same output structure as the model."""

    def detect(self, program: Any, images: Any) -> list[dict[str, Any]] | None:
        """Optional: detections of a loaded artifact for a batch of *normalised* images.

        ``images`` is the ``[B, 3, H, W]`` float tensor the deploy model takes (after the
        data pipeline's ``Normalize``); the backend converts it to its native input (e.g. a
        camera pyramid frame) and decodes its outputs into one dict per image (``boxes``,
        ``scores``, ``labels`` in network-input pixels), exactly like the model's eval mode.
        The compile stage uses it to score the artifact on the validation data. The default
        (None) means the backend cannot decode; the stage then reports no mAP for compile.
        """
        return None

    def artifact_path(self, options: Mapping[str, Any], out_dir: Path) -> Path | None:
        """Optional: the file :meth:`compile` writes for these ``options`` and ``out_dir``,
        so ``fcos val --stage compile`` finds the compile stage's artifact without compiling
        again. The default (None) means the user names it (``--checkpoint``)."""
        return None


def post_process_params(model: Any) -> dict[str, Any] | None:
    """The FCOS decoding parameters of ``model.post_process`` (FCOSMultiStrideFilter), as plain
    values a compiled artifact can carry so that its runtime decodes without the config; None
    when the model has no such post-process. ``num_classes`` is the model's (None when it does
    not say); a backend that knows it from the program may replace it."""
    post = getattr(model, "post_process", None)
    if post is None or not hasattr(post, "strides"):
        return None
    return {
        "strides": [int(s) for s in post.strides],
        "num_classes": int(getattr(model, "num_classes", 0)) or None,
        "threshold": float(post.threshold),
        "score_threshold": float(post.score_threshold),
        "iou_threshold": float(post.iou_threshold),
        "nms_pre": int(post.nms_pre),
        "max_per_img": int(post.max_per_img),
        "max_shape": list(post.max_shape) if post.max_shape else None,
        "bbox_upscaled": bool(getattr(model, "bbox_upscaled", False)),
    }


def decode_detections(
    outputs: Sequence[Any], det: Mapping[str, Any], image_hw: tuple[int, int]
) -> list[dict[str, Any]]:
    """Detections from an artifact's float head outputs (``[B, C, H, W]`` tensors per stride,
    cls then box then centerness, as the deploy model returns them), decoded by fcos's
    ``FCOSMultiStrideFilter`` with the parameters :func:`post_process_params` stored in the
    artifact (``det``): one dict per image (``boxes``, ``scores``, ``labels``) in the
    ``image_hw`` network-input pixels, exactly like the model's eval mode."""
    from fcos_core.models.post_process import FCOSMultiStrideFilter

    post = FCOSMultiStrideFilter(
        det["strides"],
        threshold=det["threshold"],
        score_threshold=det["score_threshold"],
        iou_threshold=det["iou_threshold"],
        nms_pre=det["nms_pre"],
        max_per_img=det["max_per_img"],
        max_shape=det["max_shape"],
    )
    return post.detect(list(outputs), image_hw, bbox_upscaled=bool(det.get("bbox_upscaled", False)))


def check_timing_options(opts: Mapping[str, Any]) -> None:
    """A backend's own ``latency_runs`` / ``warmup_runs`` must be counts (0 skips timing)."""
    from fcos_core.errors import FcosUserError

    if int(opts["latency_runs"]) < 0 or int(opts["warmup_runs"]) < 0:
        raise FcosUserError(
            "compile_cfg.latency_runs and warmup_runs must be >= 0",
            hint="use 0 to skip the latency measurement",
        )


def resolve_compile_options(
    schema: type,
    march: str,
    defaults: Mapping[str, Any],
    options: Mapping[str, Any],
    out_dir: Path | None,
) -> dict[str, Any]:
    """A backend's options for one compile: the schema's defaults, then the backend's own
    ``defaults``, then the config's ``compile_cfg`` (without ``march``); ``out_dir`` falls back
    to the argument. Names the schema does not know are a user error that lists the valid
    ones. Backend-specific value checks come after this, in the backend."""
    from fcos_core.errors import FcosUserError
    from fcos_core.schema import fields_of

    fields = fields_of(schema)
    opts: dict[str, Any] = {
        name: info.default for name, info in fields.items() if not info.required
    }
    opts.update(defaults)
    opts.update({k: v for k, v in options.items() if k != "march"})
    if not opts.get("out_dir"):
        if out_dir is None:
            raise FcosUserError("compile_cfg.out_dir is not set", hint="set compile_cfg.out_dir")
        opts["out_dir"] = str(out_dir)
    unknown = set(opts) - set(fields)
    if unknown:
        raise FcosUserError(
            f"compile_cfg: unknown option(s) {sorted(unknown)} for march {march}",
            hint=f"use {', '.join(sorted(fields))}",
        )
    return opts


def example_image_tensor(example_inputs: Mapping[str, Any]) -> Any:
    """The one example image batch of an FCOS deploy model as a float tensor; a shape
    (``[1, 3, H, W]``, as ``deploy_inputs`` gives it) becomes seeded uniform [-1, 1) data."""
    import torch

    from fcos_core.errors import FcosUserError

    if len(example_inputs) != 1:
        raise FcosUserError(
            f"example inputs {sorted(example_inputs)}: the FCOS deploy model has exactly one input",
            hint="deploy_inputs: {img: [1, 3, H, W]}",
        )
    value = next(iter(example_inputs.values()))
    if isinstance(value, (list, tuple)):
        g = torch.Generator().manual_seed(0)
        return torch.rand(tuple(int(v) for v in value), generator=g) * 2 - 1
    return torch.as_tensor(value).float()
