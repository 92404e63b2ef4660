"""Every hook an fcos plugin can implement, with its contract.

All registration hooks are *collect-all*: fcos calls every implementation, once, when the plugin
host starts (:func:`fcos_core.plugins.get_host`). Each receives a ``register`` callable and calls
it once per component it provides::

    register(
        name: str,                 # the ``type:`` a config uses, unique within the kind
        factory: str | Callable,   # "package.module:attr" (imported only when built) or a callable
        schema: type | None,       # an attrs class: the component's arguments (torch-free module)
        doc: str | None = None,    # one line; defaults to the schema's docstring
        aliases: Sequence[str] = (),
    )

Contract shared by all registration hooks:

* The module that implements them must import without torch (``fcos --help``, ``fcos plugins``
  and ``fcos check`` answer in under 2 s). Give ``factory`` as an import string; the factory's
  module is imported the first time a stage builds the component.
* ``schema`` is an attrs class whose fields are the component's keyword arguments (see
  :mod:`fcos_core.schema`). The config is validated against it before any work starts, and the
  factory is called as ``factory(**fields)`` with nested component blocks already built.
* A name that another plugin already registered in the same kind is an error that names both
  plugins: fcos never lets load order pick a winner.
* A hook implementation may accept no argument it does not use; the spec only ever grows.

Hooks that are not registrations are documented where they appear below.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from fcos_core.hooks import PROJECT_NAME, hookspec


class Register(Protocol):
    """The ``register`` callable each registration hook receives (one per plugin and kind).

    ``extra`` keywords are kept on the registry entry for the kinds that document them (e.g.
    ``add_arguments`` for :func:`register_commands`).
    """

    def __call__(
        self,
        name: str,
        factory: str | Callable[..., Any],
        schema: type | None = None,
        doc: str | None = None,
        aliases: Sequence[str] = (),
        **extra: Any,
    ) -> None: ...


# --- model ----------------------------------------------------------------------------------


@hookspec
def register_models(register: Register) -> None:
    """Register whole detectors (``model:`` / ``deploy_model:`` blocks, e.g. ``FCOS``).

    The factory returns a ``torch.nn.Module``. In training mode ``forward(batch)`` returns a
    dict of named scalar losses; in eval mode, a list with one detection dict per image
    (``boxes`` [N, 4] xyxy in input-image pixels, ``scores`` [N], ``labels`` [N]). A detector
    built without targets/losses (a deploy model) returns the raw per-stride head outputs.
    """


@hookspec
def register_backbones(register: Register) -> None:
    """Register feature extractors (``backbone:`` blocks, e.g. ``efficientnet``).

    The factory returns a module mapping an image batch [B, 3, H, W] to a list of feature maps
    ordered by increasing stride. The module exposes ``out_strides: list[int]`` and
    ``out_channels: list[int]`` so a neck can be checked against it at construction time.
    """


@hookspec
def register_necks(register: Register) -> None:
    """Register necks (``neck:`` blocks, e.g. ``BiFPN``).

    The factory returns a module mapping the backbone's list of features to a list of features
    at the neck's ``out_strides``, ordered by increasing stride.
    """


@hookspec
def register_heads(register: Register) -> None:
    """Register detection heads (``head:`` blocks, e.g. ``FCOSHead``).

    The factory returns a module mapping the neck's features to per-stride raw outputs.
    """


@hookspec
def register_targets(register: Register) -> None:
    """Register target assigners (``targets:`` blocks, e.g. ``DynamicFcosTarget``).

    The factory returns a callable that, given head outputs and ground truth, returns the
    training targets the detector's losses consume.
    """


@hookspec
def register_losses(register: Register) -> None:
    """Register loss functions (``loss_*:`` blocks, e.g. ``FocalLoss``, ``GIoULoss``).

    The factory returns a ``torch.nn.Module``; ``reduction`` follows torch's conventions.
    """


@hookspec
def register_post_processes(register: Register) -> None:
    """Register post-processes (``post_process:`` blocks, e.g. ``FCOSMultiStrideFilter``).

    The factory returns a module turning raw head outputs into detections (or, for compile,
    fixed-shape filtered tensors).
    """


# --- data -----------------------------------------------------------------------------------


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets (``dataset:`` blocks, e.g. ``Coco``).

    The factory returns a map-style ``torch.utils.data.Dataset`` whose items are dicts with at
    least ``img`` and, for detection, ``gt_bboxes`` / ``gt_classes``. It takes a ``transforms``
    list of already-built transforms. It must be safe to pickle before first use (worker
    processes and DDP ranks open their own file handles).
    """


@hookspec
def register_transforms(register: Register) -> None:
    """Register data transforms (entries of a ``transforms:`` list, e.g. ``Resize``).

    The factory returns a callable ``sample -> sample`` that keeps boxes and image consistent.
    Random transforms draw from ``numpy``/``random`` state so worker seeding applies.
    """


@hookspec
def register_samplers(register: Register) -> None:
    """Register samplers (``sampler:`` blocks, e.g. ``DistributedSampler``).

    Samplers are *lazy* components: the data loader builds them with ``dataset=...`` added.
    """


@hookspec
def register_collates(register: Register) -> None:
    """Register collate functions (``collate_fn: NAME``, e.g. ``collate_2d``).

    The factory is the collate function itself (``list[sample] -> batch``); ``schema`` is None.
    """


@hookspec
def register_data_loaders(register: Register) -> None:
    """Register data-loader builders (``data_loader:`` blocks, e.g. ``DataLoader``)."""


# --- evaluation and training ----------------------------------------------------------------


@hookspec
def register_metrics(register: Register) -> None:
    """Register metrics (``val_metrics:`` / ``metrics:`` blocks, e.g. ``COCODetectionMetric``).

    The factory returns an object with ``reset()``, ``update(batch, outputs)`` and
    ``compute() -> dict[str, float]``.
    """


@hookspec
def register_callbacks(register: Register) -> None:
    """Register trainer callbacks (entries of ``callbacks:``, e.g. ``Checkpoint``, ``Validation``).

    Callbacks document the order they run in; see :mod:`fcos_core.engine.callbacks`.
    """


@hookspec
def register_batch_processors(register: Register) -> None:
    """Register batch processors (``batch_processor:`` blocks, e.g. ``MultiBatchProcessor``)."""


@hookspec
def register_functions(register: Register) -> None:
    """Register named functions a config refers to by name (``loss_collector``,
    ``metric_update_func``). The factory is the function itself; ``schema`` is None.
    """


@hookspec
def register_optimizers(register: Register) -> None:
    """Register optimizers (``optimizer:`` blocks, e.g. ``SGD``).

    The factory is called as ``factory(model=..., **fields)`` by the trainer (the optimizer
    field is lazy); it resolves per-parameter-group options such as the seed's
    ``params: {weight: {weight_decay: 4e-5}}`` against the model's parameter names.
    """


@hookspec
def register_trainers(register: Register) -> None:
    """Register trainers and predictors (``*_trainer`` / ``*_predictor`` blocks)."""


# --- quantization and deployment ------------------------------------------------------------


@hookspec
def register_converters(register: Register) -> None:
    """Register model converters (``converters:`` entries, e.g. ``LoadCheckpoint``,
    ``Float2QAT``), and ``ModelConvertPipeline`` itself.

    A converter is a callable ``model -> model``; it raises a clear error when it is applied
    in an order that cannot work (e.g. ``QAT2Quantize`` on a float model).
    """


@hookspec
def register_observers(register: Register) -> None:
    """Register activation range observers (e.g. ``minmax``, ``percentile``, ``mse``, ``kl``),
    chosen by ``Float2Calibration``'s ``activation_observer`` and ``Float2QAT``'s
    ``qat_observer`` blocks (``{type: percentile, percentile: 99.99}``).

    The factory is a subclass of ``fcos_core.quantization.observers.SymmetricObserver``. The
    observer field is lazy: the converter calls ``factory(dtype=..., quant_min=...,
    quant_max=..., qscheme=..., is_dynamic=..., **fields)`` once per quantized tensor, so the
    factory passes the keyword arguments it does not own on to ``SymmetricObserver``.
    ``schema`` holds only the observer's own options.
    """


@hookspec
def register_compile_backends(register: Register) -> None:
    """Register compile backends, selected by the config's ``march`` (e.g. ``nash_e``).

    The factory returns a backend object that supplies: its quantization constraints (used by
    the quantization flow), a checker, ``compile(quantized_model, example_inputs, options)``
    returning an artifact and a report, and ``load``/``run`` for the artifact. ``schema`` is the
    attrs class of the ``compile_cfg`` options it accepts.
    """


# --- command line ---------------------------------------------------------------------------


@hookspec
def register_commands(register: Register) -> None:
    """Register ``fcos`` subcommands.

    Call ``register(name, factory="pkg.module:run", doc="one line", add_arguments=callable)``.
    ``add_arguments(parser)`` (torch-free) adds argparse arguments; ``run(args, host) -> int``
    is imported only when the command runs; it gets the parsed arguments and the
    :class:`~fcos_core.plugins.PluginHost`, and returns the exit code. Raise
    :class:`~fcos_core.errors.FcosUserError` for user mistakes (exit code 2, no traceback).
    """


def registration_hooks() -> dict[str, Callable[..., None]]:
    """Every registration hookspec (``register_<kind>``), by name, in the order defined here.

    The registry kinds (:data:`fcos_core.registry.KINDS`) are derived from this, so adding a
    hookspec above is the one edit that adds a kind.
    """
    return {
        name: fn
        for name, fn in globals().items()
        if name.startswith("register_")
        and inspect.isfunction(fn)
        and getattr(fn, f"{PROJECT_NAME}_spec", None) is not None
    }


def hook_docs() -> dict[str, str]:
    """Hook name -> its documented contract (for ``fcos docs`` and the docs meta-test)."""
    return {name: inspect.getdoc(fn) or "" for name, fn in registration_hooks().items()}
