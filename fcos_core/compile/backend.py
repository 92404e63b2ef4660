"""What a compile backend (``register_compile_backends``) provides.

A backend is selected by the config's ``march`` and is the one place that knows the target:

* :meth:`CompileBackend.quantization_rules` -- the dtypes and shared-scale rules the
  quantization flow must follow for this target (None: fcos's defaults).
* :meth:`CompileBackend.check` -- can this (float or quantized) deploy model compile? One
  :class:`CheckIssue` per unsupported layer, naming the layer and the reason. ``fcos check
  CONFIG --model`` calls it before any training, as HAT's model checker does.
* :meth:`CompileBackend.compile` -- quantized deploy model + example inputs + the validated
  options *object* (an instance of the backend's attrs schema, :attr:`CompileBackend.
  options_schema`, the class it registers for ``compile_cfg``) -> one artifact file and a
  report. The backend reads attributes (``options.latency_runs``).
* :meth:`CompileBackend.load` / :meth:`CompileBackend.run` -- execute an artifact on this
  machine; outputs have the deploy model's output structure.
* optional: :meth:`CompileBackend.detect` (decoded detections of an artifact, to score it) and
  :meth:`CompileBackend.artifact_path` (where :meth:`CompileBackend.compile` puts the artifact).

Options: :meth:`CompileBackend.resolve_options` is the one way from a mapping (the config's
``compile_cfg``, a test's dict) to the options object: the schema's defaults, then the
backend's :meth:`~CompileBackend.option_defaults` (its constructor keywords), then the mapping;
``march`` and fcos core's compile-stage keys (:data:`fcos_core.compile.deploy_table.CHECK_KEYS`:
``allow_disagreement``, ``check_images``, ...) are dropped, ``out_dir`` falls back to the
argument, unknown names, missing required ones and wrongly typed values are a
:class:`~fcos_core.errors.FcosUserError`, then :meth:`~CompileBackend.check_options` runs the
backend's own value checks. The compile stage resolves once and passes the object to
``compile`` and ``artifact_path``. For convenience a subclass's ``compile`` and
``artifact_path`` also accept a mapping: the base class converts it through
:meth:`~CompileBackend.resolve_options` before the subclass's code runs (one place,
:meth:`CompileBackend.__init_subclass__`), so an implementation always sees the object.

The module is torch-free so registration stays cheap; implementations import torch lazily.
"""

from __future__ import annotations

import abc
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import attrs

#: a backend's options object: an instance of its attrs ``compile_cfg`` schema
OptionsT = TypeVar("OptionsT")


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


class CompileBackend(abc.ABC, Generic[OptionsT]):
    """Base class for compile backends; see the module docstring for the contract.

    Subclass as ``CompileBackend[MyCompileOptions]`` and set :attr:`options_schema` to the same
    attrs class (the one registered as the backend's ``compile_cfg`` schema)."""

    #: the ``march`` name this backend answers to
    name: str = ""
    #: the attrs class of this backend's options (None: ``compile`` gets the mapping as given)
    options_schema: type | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Let a subclass's ``compile`` / ``artifact_path`` take a mapping too: it is resolved
        through :meth:`resolve_options` before the subclass's code runs."""
        super().__init_subclass__(**kwargs)
        for name in ("compile", "artifact_path"):
            impl = cls.__dict__.get(name)
            if callable(impl) and not getattr(impl, "__isabstractmethod__", False):
                setattr(cls, name, _resolving(impl, name))

    def option_defaults(self) -> Mapping[str, Any]:
        """The backend's own defaults, between the schema's and the config's (e.g. the
        constructor's keywords); none by default."""
        return {}

    def check_options(self, options: OptionsT) -> None:
        """The backend's value checks beyond the schema's types (a :class:`FcosUserError`
        naming the ``compile_cfg`` key); none by default."""

    def resolve_options(
        self, options: OptionsT | Mapping[str, Any] | None = None, out_dir: Path | None = None
    ) -> OptionsT:
        """The options object for ``options`` (see the module docstring); an instance of
        :attr:`options_schema` is checked and returned as it is. A backend without a schema
        gets ``options`` back unchanged."""
        schema = self.options_schema
        if schema is None:
            return cast(OptionsT, options if options is not None else {})
        if isinstance(options, schema):
            opts = cast(OptionsT, options)
        else:
            opts = cast(
                OptionsT,
                resolve_compile_options(
                    schema,
                    self.name,
                    self.option_defaults(),
                    cast(Mapping[str, Any], options or {}),
                    out_dir,
                ),
            )
        self.check_options(opts)
        return opts

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
        options: OptionsT,
        out_dir: Path,
    ) -> CompileResult:
        """Compile a quantized deploy model; ``options`` is the backend's options object
        (:meth:`resolve_options`; a mapping is converted before this runs)."""

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

    def artifact_path(self, options: OptionsT, out_dir: Path) -> Path | None:
        """Optional: the file :meth:`compile` writes for these ``options`` (the options
        object, as :meth:`compile` gets it) and ``out_dir``,
        so ``fcos val --stage compile`` finds the compile stage's artifact without compiling
        again. The default (None) means the user names it (``--checkpoint``)."""
        return None


def _resolving(impl: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``impl`` (a subclass's ``compile`` or ``artifact_path``) with its ``options`` argument
    resolved through :meth:`CompileBackend.resolve_options` first."""
    if name == "compile":

        @functools.wraps(impl)
        def compile(
            self: CompileBackend[Any],
            model: Any,
            example_inputs: Mapping[str, Any],
            options: Any,
            out_dir: Path | None = None,
        ) -> Any:
            opts = self.resolve_options(options, Path(out_dir) if out_dir else None)
            return impl(self, model, example_inputs, opts, out_dir)

        return compile

    @functools.wraps(impl)
    def artifact_path(self: CompileBackend[Any], options: Any, out_dir: Path) -> Any:
        return impl(self, self.resolve_options(options, Path(out_dir)), out_dir)

    return artifact_path


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


def check_timing_options(opts: Any) -> None:
    """A backend's own ``latency_runs`` / ``warmup_runs`` (attributes of its options object)
    must be counts (0 skips timing)."""
    from fcos_core.errors import FcosUserError

    if int(opts.latency_runs) < 0 or int(opts.warmup_runs) < 0:
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
) -> Any:
    """A backend's options object for one compile: an instance of ``schema`` built from the
    schema's defaults, then the backend's own ``defaults``, then the config's ``compile_cfg``
    (``march`` and fcos core's compile-stage keys dropped); ``out_dir`` falls back to the
    argument. Unknown names (the hint lists the valid ones, the core keys included), missing
    required ones and values of the wrong type are user errors. Backend-specific value checks
    come after this (:meth:`CompileBackend.check_options`)."""
    from fcos_core.compile.deploy_table import CHECK_KEYS
    from fcos_core.errors import FcosUserError
    from fcos_core.schema import check_type, coerce, fields_of

    fields = fields_of(schema)
    opts: dict[str, Any] = {
        name: info.default for name, info in fields.items() if not info.required
    }
    core = ("march", *CHECK_KEYS)
    opts.update({k: v for k, v in defaults.items() if k not in core})
    opts.update({k: v for k, v in options.items() if k not in core})
    if "out_dir" in fields and not opts.get("out_dir"):
        if out_dir is None:
            raise FcosUserError("compile_cfg.out_dir is not set", hint="set compile_cfg.out_dir")
        opts["out_dir"] = str(out_dir)
    unknown = set(opts) - set(fields)
    if unknown:
        raise FcosUserError(
            f"compile_cfg: unknown option(s) {sorted(unknown)} for march {march}",
            hint=f"march {march} takes {', '.join(sorted(fields))}; every backend's compile "
            f"stage also takes {', '.join(core)}",
        )
    missing = sorted(name for name, info in fields.items() if info.required and name not in opts)
    if missing:
        raise FcosUserError(
            f"compile_cfg: march {march} needs {', '.join(missing)}",
            hint=f"set compile_cfg.{missing[0]}",
        )
    for name, value in list(opts.items()):
        if isinstance(value, os.PathLike):  # a Path where the schema says str
            value = os.fspath(value)
        why = check_type(value, fields[name].type)
        if why:
            raise FcosUserError(
                f"compile_cfg.{name} (march {march}): {why}",
                hint=f"compile_cfg.{name}: {fields[name].help}",
            )
        opts[name] = coerce(value, fields[name].type)
    return schema(**opts)


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
