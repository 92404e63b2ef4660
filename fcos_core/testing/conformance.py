"""Conformance suites: the contract of docs/interfaces.md as reusable tests.

A plugin's tests subclass a suite and name their component; pytest collects the inherited
tests (the suites' own names do not start with ``Test``, so they are not collected here)::

    from fcos_core.testing.conformance import CompileBackendConformance

    class TestMyBackend(CompileBackendConformance):
        backend_name = "mine"
        distributions = ("fcos-plugin-mine",)  # the test host loads only these

    class TestMyDataset(DatasetConformance):
        num_classes = 3

        @pytest.fixture
        def dataset(self, tmp_path):
            return MyDataset(root=make_tiny_folder(tmp_path))

Every fixture a suite uses is a method that a subclass may override (the backend suite's are
class-scoped classmethods: the host, the model, the images; ``compile_options`` -- the
``compile_cfg`` mapping, which the suite resolves into the backend's options object with
``backend.resolve_options`` -- and ``run_inputs`` are classmethods too). The module imports no
torch; the fixtures do.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from fcos_core.compile.backend import CheckIssue, CompileBackend, CompileResult
from fcos_core.errors import FcosUserError
from fcos_core.plugins import PluginHost, load_host
from fcos_core.testing.isolation import PluginHostFactory
from fcos_core.testing.torch_free import assert_torch_free


def _shapes(value: Any) -> Any:
    """The nested structure of ``value`` with every array replaced by its shape."""
    if isinstance(value, (list, tuple)):
        return [_shapes(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _shapes(v) for k, v in value.items()}
    return tuple(int(d) for d in value.shape)


def tiny_quantized_fcos(
    backend: Any = None,
    size: int = 32,
    num_classes: int = 3,
    seed: int = 0,
    head_output: str = "int16",
) -> Any:
    """A tiny FCOS deploy model (stand-in backbone and neck, the real FCOSHead with
    ``head_output`` (``"int8"`` or ``"int16"``) predictor outputs and the ``for_compile``
    post-process, strides 8 and 16), quantized through fcos's public flow (Float2QAT ->
    calibration on random images -> freeze -> QAT2Quantize) under ``backend``'s quantization
    rules. Input ``img [1, 3, size, size]``."""
    if head_output not in ("int8", "int16"):
        raise ValueError(f"head_output must be 'int8' or 'int16', got {head_output!r}")
    import torch

    from fcos_core.convert_context import ConvertContext
    from fcos_core.models.fcos import FCOS
    from fcos_core.models.head import FCOSHead
    from fcos_core.models.post_process import FCOSMultiStrideFilter
    from fcos_core.quantization.converters import Float2QAT, QAT2Quantize, freeze_observers
    from fcos_core.testing.standins import TinyBackbone, TinyNeck

    torch.manual_seed(seed)
    strides = [8, 16]
    backbone = TinyBackbone(strides)
    neck = TinyNeck(strides, backbone.out_channels, 16)
    head = FCOSHead(
        num_classes=num_classes,
        in_strides=strides,
        out_strides=strides,
        stride2channels=dict.fromkeys(strides, 16),
        feat_channels=16,
        stacked_convs=1,
        int8_output=head_output == "int8",
        int16_output=head_output == "int16",
        dequant_output=False,
    )
    post = FCOSMultiStrideFilter(strides=strides, for_compile=True, max_shape=(size, size))
    model = FCOS(backbone, neck, head, post_process=post).eval()
    ctx = ConvertContext(example_inputs={"img": (1, 3, size, size)}, backend=backend)
    qat: Any = Float2QAT()(copy.deepcopy(model), ctx)
    qat.body.train()  # observers move only in training mode; BN is folded already
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(3):
            qat(torch.rand(2, 3, size, size, generator=g) * 2 - 1)
    qat.eval()
    freeze_observers(qat)
    return QAT2Quantize()(qat, ctx).eval()


class CompileBackendConformance:
    """What every compile backend must do, on a tiny quantized FCOS.

    Set ``backend_name`` (the ``march``) and ``distributions`` (the test host then loads
    fcos-core and only those; empty: every installed plugin). Override ``compile_options``
    for options the backend needs,
    ``run_inputs`` when ``run`` takes something other than ``{"img": images}`` and
    ``supports_detect = False`` for a backend whose ``detect`` returns None.
    """

    backend_name: str = ""
    #: the distributions the test host loads (e.g. the backend's own); empty: all installed
    distributions: tuple[str, ...] = ()
    #: modules besides the registering plugin that must import without torch
    torch_free_modules: tuple[str, ...] = ()
    supports_detect: bool = True
    input_size: int = 32
    #: dtype of the head's predictor outputs in the tiny model (a target without int16: int8)
    head_output: str = "int16"

    @pytest.fixture(scope="class")
    @classmethod
    def host(cls) -> Iterator[PluginHost]:
        """fcos-core's built-ins and the installed ``distributions`` (every installed plugin
        when empty), torn down after the class."""
        hosts = PluginHostFactory()
        try:
            if cls.distributions:
                yield hosts(distributions=cls.distributions)
            else:
                yield hosts.track(load_host())
        finally:
            hosts.close()

    @pytest.fixture(scope="class")
    @classmethod
    def entry(cls, host: PluginHost) -> Any:
        assert cls.backend_name, "set backend_name on the conformance test class"
        return host.registries["compile_backends"].lookup(cls.backend_name)

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, entry: Any) -> CompileBackend[Any]:
        backend = entry.load()()
        assert isinstance(backend, CompileBackend), f"{entry.factory_ref} is no CompileBackend"
        return backend

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, backend: CompileBackend[Any]) -> Any:
        return tiny_quantized_fcos(backend, cls.input_size, head_output=cls.head_output)

    @pytest.fixture(scope="class")
    @classmethod
    def images(cls) -> Any:
        import torch

        g = torch.Generator().manual_seed(1)
        return torch.rand(2, 3, cls.input_size, cls.input_size, generator=g) * 2 - 1

    @classmethod
    def compile_options(cls, out_dir: Path) -> dict[str, Any]:
        """The ``compile_cfg`` (without ``march``) for the tiny model, as YAML would give it
        (override as a classmethod); the suite resolves it into the options object."""
        return {"out_dir": str(out_dir)}

    @classmethod
    def run_inputs(cls, program: Any, images: Any) -> Mapping[str, Any]:
        """What ``backend.run`` takes for a batch of normalised images ``[B, 3, H, W]``
        (override as a classmethod)."""
        return {"img": images}

    @pytest.fixture(scope="class")
    @classmethod
    def compiled(
        cls, backend: CompileBackend[Any], model: Any, tmp_path_factory: pytest.TempPathFactory
    ) -> dict[str, Any]:
        import torch

        out_dir = tmp_path_factory.mktemp(f"compile-{cls.backend_name}")
        g = torch.Generator().manual_seed(2)
        example = {"img": torch.rand(1, 3, cls.input_size, cls.input_size, generator=g) * 2 - 1}
        config = cls.compile_options(out_dir)
        options = backend.resolve_options(config, out_dir)
        result = backend.compile(model, example, options, out_dir)
        return {
            "result": result,
            "config": config,
            "options": options,
            "out_dir": out_dir,
            "program": backend.load(result.artifact),
        }

    # -- registration -------------------------------------------------------------------

    def test_registered_with_a_schema(
        self, host: PluginHost, entry: Any, backend: CompileBackend[Any]
    ) -> None:
        assert isinstance(backend, CompileBackend)
        assert backend.name == entry.name
        assert entry.schema is not None, "register the compile_cfg options schema"
        assert entry.doc.strip(), "the schema's docstring is the backend's one-line doc"
        assert backend.options_schema is entry.schema, (
            "set the backend's options_schema to its registered compile_cfg schema"
        )

    # -- options ------------------------------------------------------------------------

    def test_options_object_carries_the_config(self, entry: Any, compiled: dict[str, Any]) -> None:
        options = compiled["options"]
        assert isinstance(options, entry.schema)
        for key, value in compiled["config"].items():
            assert getattr(options, key) == value, key

    def test_compile_receives_its_options_object(
        self, backend: CompileBackend[Any], entry: Any, model: Any, tmp_path: Path
    ) -> None:
        """``compile`` given the config's mapping (with ``march`` and fcos core's keys, as
        ``compile_cfg`` has them) gets an instance of the schema with the config's values."""
        received: list[Any] = []

        class Received(Exception):
            pass

        def record(self: Any, model: Any, example: Any, options: Any, out_dir: Path) -> Any:
            received.append(options)
            raise Received

        spy = type("Spy", (type(backend),), {"compile": record})()
        config = self.compile_options(tmp_path)
        size = [1, 3, self.input_size, self.input_size]
        cfg = {"march": self.backend_name, "check_images": 2, "allow_disagreement": True, **config}
        with pytest.raises(Received):
            spy.compile(model, {"img": size}, cfg, tmp_path)
        (options,) = received
        assert isinstance(options, entry.schema)
        for key, value in config.items():
            assert getattr(options, key) == value, key

    def test_unknown_option_names_the_valid_ones(
        self, backend: CompileBackend[Any], entry: Any, tmp_path: Path
    ) -> None:
        from fcos_core.compile.deploy_table import CHECK_KEYS
        from fcos_core.schema import fields_of

        config = {**self.compile_options(tmp_path), "no_such_option": 1}
        with pytest.raises(FcosUserError, match="no_such_option") as info:
            backend.resolve_options(config, tmp_path)
        hint = info.value.hint or ""
        for name in (*fields_of(entry.schema), *CHECK_KEYS):
            assert name in hint, f"the hint does not name {name}: {hint}"

    def test_registration_imports_no_torch(self, host: PluginHost, entry: Any) -> None:
        plugin = host.pm.get_plugin(entry.plugin)
        modules = [getattr(plugin, "__name__", type(plugin).__module__), *self.torch_free_modules]
        assert_torch_free(*modules)

    # -- check / compile / load / run ---------------------------------------------------

    def test_check_accepts_the_tiny_model(self, backend: CompileBackend[Any], model: Any) -> None:
        issues = list(backend.check(model, {"img": [1, 3, self.input_size, self.input_size]}))
        assert all(isinstance(i, CheckIssue) for i in issues)
        assert issues == [], "\n".join(i.render() for i in issues)

    def test_compile_writes_one_artifact(
        self, backend: CompileBackend[Any], compiled: dict[str, Any]
    ) -> None:
        result = compiled["result"]
        assert isinstance(result, CompileResult)
        assert result.artifact.is_file() and result.artifact.stat().st_size > 0
        assert isinstance(result.report, dict)
        assert all(Path(f).is_file() for f in result.files)
        where = backend.artifact_path(compiled["options"], compiled["out_dir"])
        assert where is None or Path(where) == result.artifact, (
            "artifact_path() must name the file compile() wrote"
        )

    def test_run_has_the_models_output_structure(
        self, backend: CompileBackend[Any], model: Any, compiled: dict[str, Any], images: Any
    ) -> None:
        import torch

        x = images[:1]
        with torch.no_grad():
            want = _shapes(model(x))
        got = _shapes(backend.run(compiled["program"], self.run_inputs(compiled["program"], x)))
        assert got == want

    def test_load_rejects_a_damaged_artifact(
        self, backend: CompileBackend[Any], compiled: dict[str, Any], tmp_path: Path
    ) -> None:
        data = compiled["result"].artifact.read_bytes()
        truncated = tmp_path / f"truncated{compiled['result'].artifact.suffix}"
        truncated.write_bytes(data[: len(data) // 2])
        foreign = tmp_path / f"foreign{compiled['result'].artifact.suffix}"
        foreign.write_bytes(b"not an artifact\n" * 64)
        for path in (truncated, foreign):
            with pytest.raises(FcosUserError):
                backend.load(path)

    def test_detect_returns_one_dict_per_image(
        self, backend: CompileBackend[Any], compiled: dict[str, Any], images: Any
    ) -> None:
        dets = backend.detect(compiled["program"], images)
        if not self.supports_detect:
            assert dets is None
            return
        assert dets is not None and len(dets) == len(images)
        for d in dets:
            n = len(d["scores"])
            assert _shapes(d["boxes"]) == (n, 4) and _shapes(d["labels"]) == (n,)
            if n:
                boxes = d["boxes"]
                assert bool((boxes[:, 2] >= boxes[:, 0]).all())
                assert bool((boxes[:, 3] >= boxes[:, 1]).all())


class DatasetConformance:
    """What every dataset must do (docs/interfaces.md, "Data samples and batches").

    Override the ``dataset`` fixture (a built dataset, without random transforms) and, when
    known, set ``num_classes``.
    """

    num_classes: int | None = None

    @pytest.fixture
    def dataset(self) -> Any:
        raise NotImplementedError("override the dataset fixture")

    def test_len_is_a_positive_int(self, dataset: Any) -> None:
        assert isinstance(len(dataset), int) and len(dataset) > 0

    def test_sample_structure(self, dataset: Any) -> None:
        import numpy as np

        for i in range(min(len(dataset), 4)):
            s = dataset[i]
            assert isinstance(s, dict), f"item {i} is a {type(s).__name__}, not a dict"
            assert {"img", "gt_bboxes", "gt_classes"} <= set(s), sorted(s)
            img = np.asarray(s["img"])
            assert img.ndim == 3 and 3 in (img.shape[0], img.shape[-1]), img.shape
            boxes, labels = np.asarray(s["gt_bboxes"]), np.asarray(s["gt_classes"])
            assert boxes.ndim == 2 and boxes.shape[1] == 4 and boxes.dtype == np.float32
            assert labels.shape == (len(boxes),) and labels.dtype == np.int64
            assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
            if self.num_classes is not None:
                assert ((labels >= -1) & (labels < self.num_classes)).all(), labels

    def test_items_are_deterministic(self, dataset: Any) -> None:
        import numpy as np

        for i in {0, len(dataset) - 1}:
            a, b = dataset[i], dataset[i]
            assert sorted(a) == sorted(b)
            for k in a:
                if hasattr(a[k], "shape"):
                    assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
                else:
                    assert a[k] == b[k], k

    def test_index_out_of_range_raises(self, dataset: Any) -> None:
        with pytest.raises(IndexError):
            dataset[len(dataset)]
