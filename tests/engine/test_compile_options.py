"""The options object a compile backend gets (fcos_core.compile.backend): a mapping (the
config's ``compile_cfg``, a test's dict) resolved once into an instance of the backend's attrs
schema -- defaults, backend defaults, config; ``march`` and fcos core's compile-stage keys
dropped; unknown names, missing required ones and wrong types are user errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import attrs
import pytest

from fcos_core.compile.backend import CompileBackend, CompileResult, resolve_compile_options
from fcos_core.compile.deploy_table import CHECK_KEYS
from fcos_core.engine.compile_stage import resolve_backend_options
from fcos_core.errors import FcosUserError
from fcos_core.schema import arg


@attrs.frozen(kw_only=True)
class ToyOptions:
    """A toy backend's compile_cfg."""

    out_dir: str = arg(help="folder of the artifact")
    name: str = arg("model", help="artifact name")
    level: Literal["O0", "O1"] = arg("O1", help="optimisation level")
    runs: int = arg(5, help="timed runs")
    scale: float = arg(1.0, help="a number")
    sources: list[str] = arg(["ddr"], help="per input: its source")


class ToyBackend(CompileBackend[ToyOptions]):
    """Records what ``compile`` and ``artifact_path`` receive; ``runs`` must be >= 0."""

    name = "toy"
    options_schema = ToyOptions
    received: ClassVar[list[Any]] = []

    def __init__(self, **defaults: Any) -> None:
        self.defaults = defaults

    def option_defaults(self) -> dict[str, Any]:
        return self.defaults

    def check_options(self, options: ToyOptions) -> None:
        if options.runs < 0:
            raise FcosUserError("compile_cfg.runs must be >= 0", hint="e.g. runs: 5")

    def check(self, model: Any, example_inputs: Any) -> list[Any]:
        return []

    def compile(
        self, model: Any, example_inputs: Any, options: ToyOptions, out_dir: Path
    ) -> CompileResult:
        ToyBackend.received.append(options)
        path = self.artifact_path(options, out_dir)
        path.write_text(options.name)
        return CompileResult(artifact=path, report={"runs": options.runs})

    def artifact_path(self, options: ToyOptions, out_dir: Path) -> Path:
        ToyBackend.received.append(options)
        return Path(options.out_dir) / f"{options.name}.toy"

    def load(self, artifact: Path) -> Any:
        return artifact.read_text()

    def run(self, program: Any, inputs: Any) -> Any:
        return program


def test_compile_gets_an_instance_of_the_schema_with_the_configs_values(tmp_path):
    ToyBackend.received.clear()
    backend = ToyBackend(name="from_backend", runs=3)
    config = {"march": "toy", "runs": 7, "scale": 2, "sources": ["pyramid"], "check_images": 4}
    result = backend.compile(None, {}, config, tmp_path)
    opts = ToyBackend.received[0]
    assert isinstance(opts, ToyOptions)
    # schema default < backend default < config; out_dir falls back to the argument
    assert opts == ToyOptions(
        out_dir=str(tmp_path),
        name="from_backend",
        level="O1",
        runs=7,
        scale=2.0,
        sources=["pyramid"],
    )
    assert isinstance(opts.scale, float)  # coerced as the annotation says
    assert ToyBackend.received[1] is opts  # artifact_path got the same object, not re-resolved
    assert result.artifact == tmp_path / "from_backend.toy" and result.report == {"runs": 7}


def test_an_options_object_is_passed_through_and_still_checked(tmp_path):
    ToyBackend.received.clear()
    backend = ToyBackend()
    opts = ToyOptions(out_dir=str(tmp_path / "elsewhere"), name="m")
    (tmp_path / "elsewhere").mkdir()
    backend.compile(None, {}, opts, tmp_path)
    assert ToyBackend.received[0] is opts
    assert backend.artifact_path(opts, tmp_path) == tmp_path / "elsewhere" / "m.toy"
    with pytest.raises(FcosUserError, match="runs must be >= 0"):
        backend.compile(None, {}, ToyOptions(out_dir=str(tmp_path), runs=-1), tmp_path)
    with pytest.raises(FcosUserError, match="runs must be >= 0"):
        backend.compile(None, {}, {"runs": -1}, tmp_path)
    # compile + its artifact_path + the direct artifact_path; neither bad call got through
    assert len(ToyBackend.received) == 3 and all(o is opts for o in ToyBackend.received)


def test_unknown_option_lists_the_backends_options_and_the_core_keys(tmp_path):
    with pytest.raises(FcosUserError, match=r"unknown option\(s\) \['runz'\] for march toy") as e:
        ToyBackend().resolve_options({"runz": 3}, tmp_path)
    hint = e.value.hint or ""
    for name in (*attrs.fields_dict(ToyOptions), *CHECK_KEYS, "march"):
        assert name in hint, name
    # fcos core's keys are the compile stage's: never an error, never in the object
    opts = ToyBackend().resolve_options(dict.fromkeys(CHECK_KEYS, 1), tmp_path)
    assert opts == ToyOptions(out_dir=str(tmp_path))


def test_missing_out_dir_wrong_types_and_paths(tmp_path):
    with pytest.raises(FcosUserError, match="out_dir is not set"):
        ToyBackend().resolve_options({}, None)
    with pytest.raises(
        FcosUserError, match=r"compile_cfg\.runs \(march toy\): expected an integer"
    ):
        ToyBackend().resolve_options({"runs": "7"}, tmp_path)
    with pytest.raises(FcosUserError, match=r"compile_cfg\.level.*'O0', 'O1'"):
        ToyBackend().resolve_options({"level": "O3"}, tmp_path)
    assert ToyBackend().resolve_options({"out_dir": tmp_path}, None).out_dir == str(tmp_path)


def test_required_option_without_a_value_is_named():
    @attrs.frozen(kw_only=True)
    class Needs:
        hbm: str = arg(help="artifact path")

    with pytest.raises(FcosUserError, match="march x needs hbm") as e:
        resolve_compile_options(Needs, "x", {}, {}, None)
    assert e.value.hint == "set compile_cfg.hbm"


def test_a_backend_without_a_schema_gets_the_mapping(tmp_path):
    class Loose(CompileBackend):
        name = "loose"

        def check(self, model: Any, example_inputs: Any) -> list[Any]:
            return []

        def compile(self, model: Any, example_inputs: Any, options: Any, out_dir: Path) -> Any:
            return options

        def load(self, artifact: Path) -> Any:
            return None

        def run(self, program: Any, inputs: Any) -> Any:
            return None

    assert Loose().compile(None, {}, {"anything": 1}, tmp_path) == {"anything": 1}
    opts, out_dir = resolve_backend_options(Loose(), {"out_dir": str(tmp_path / "o")}, tmp_path)
    assert opts == {"out_dir": str(tmp_path / "o")} and out_dir == tmp_path / "o"


def test_the_compile_stage_resolves_once_with_the_out_dir_fallback(tmp_path):
    opts, out_dir = resolve_backend_options(ToyBackend(), {"runs": 2}, tmp_path / "ckpt")
    assert opts == ToyOptions(out_dir=str(tmp_path / "ckpt"), runs=2)
    assert out_dir == tmp_path / "ckpt"
    opts, out_dir = resolve_backend_options(ToyBackend(), {"out_dir": str(tmp_path)}, Path("x"))
    assert out_dir == tmp_path and opts.out_dir == str(tmp_path)
