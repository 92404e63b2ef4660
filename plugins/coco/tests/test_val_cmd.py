"""`fcos val` end to end: every stage's numbers equal those `fcos run` wrote (summary.json,
per-class results included), other data through --data, the report files by their content, and
the user errors.

The pipeline is the real one (Trainer, Calibrator, Predictor, Validation, Checkpoint, the COCO
dataset, collate and metric) around stand-ins that take milliseconds: ``ColourDet`` finds the
axis-aligned boxes of three colours in the image (a real detector of this data: it sees only
pixels) and shrinks class k's box by ``k * shrink`` pixels per side (``shrink`` is trained),
so the classes score differently; the quantization stand-ins round its boxes to a grid, and the
``colourmarch`` backend "compiles" it into a json its runtime decodes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fcos_core import hookimpl
from fcos_core.compile.backend import CompileResult
from fcos_core.schema import arg

SIZE = 64
COLOURS = [(230, 30, 30), (30, 200, 40), (40, 60, 230)]  # label k's colour
CATEGORIES = [{"id": 3, "name": "red"}, {"id": 8, "name": "green"}, {"id": 12, "name": "blue"}]


# --- stand-ins ---------------------------------------------------------------------------------


class ColourBody(nn.Module):
    """img [B, 3, S, S] (RGB 0..255) -> (boxes [B, K, 4] xyxy, present [B, K])."""

    def __init__(self) -> None:
        super().__init__()
        self.shrink = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("colours", torch.tensor(COLOURS, dtype=torch.float32))
        self.register_buffer("xs", torch.arange(SIZE, dtype=torch.float32).view(1, 1, 1, SIZE))
        self.register_buffer("ys", torch.arange(SIZE, dtype=torch.float32).view(1, 1, SIZE, 1))
        self.register_buffer("k", torch.arange(1, len(COLOURS) + 1, dtype=torch.float32))

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = (img[:, None] - self.colours[None, :, :, None, None]).abs().sum(2)
        mask = dist < 60  # [B, K, S, S]
        big = torch.tensor(1e4)
        x1 = torch.where(mask, self.xs, big).amin((2, 3))
        y1 = torch.where(mask, self.ys, big).amin((2, 3))
        x2 = torch.where(mask, self.xs + 1, -big).amax((2, 3))
        y2 = torch.where(mask, self.ys + 1, -big).amax((2, 3))
        d = self.shrink * self.k
        boxes = torch.stack([x1 + d, y1 + d, x2 - d, y2 - d], -1)
        return boxes, mask.flatten(2).any(2).float()


class ColourDet(nn.Module):
    """Losses in train mode; in eval mode a detection per colour found (score 0.9 - 0.2 k) and
    one false positive per image in a corner."""

    def __init__(self) -> None:
        super().__init__()
        self.body = ColourBody()

    def forward(self, batch: Any) -> Any:
        boxes, present = self.body(batch["img"])
        if self.training:  # pulls shrink down a little: training changes the numbers
            return {"fit": (boxes[..., 0] * present).mean() * 0.05}
        out = []
        for b in range(len(boxes)):
            labels = torch.nonzero(present[b] > 0.5).flatten()
            fp_label = len(labels) % len(COLOURS)
            out.append(
                {
                    "boxes": torch.cat([boxes[b][labels], torch.tensor([[1.0, 1.0, 12.0, 12.0]])]),
                    "scores": torch.cat([0.9 - 0.2 * labels.float(), torch.tensor([0.4])]),
                    "labels": torch.cat([labels, torch.tensor([fp_label])]),
                }
            )
        return out


class _Round(nn.Module):
    """The body with its boxes rounded to a 0.5-pixel grid (straight-through gradient)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.inner = body
        self.register_buffer("step", torch.tensor(0.5))

    def forward(self, img: torch.Tensor) -> Any:
        boxes, present = self.inner(img)
        q = torch.round(boxes / self.step) * self.step
        return boxes + (q - boxes).detach(), present


class ToCalibration:
    fcos_requires_qstate = ("float",)
    fcos_produces_qstate = "calibration"

    def __call__(self, model: nn.Module, ctx: Any = None) -> nn.Module:
        model.body = _Round(model.body)
        return model


class ToQAT(ToCalibration):
    fcos_produces_qstate = "qat"


class ToQuantized:
    fcos_requires_qstate = ("qat",)
    fcos_produces_qstate = "quantized"

    def __call__(self, model: nn.Module, ctx: Any = None) -> nn.Module:
        model.body = torch.fx.symbolic_trace(model.body)
        return model


class ColourBackend:
    """Compiles the model into ``<name>.json`` (its shrink); the runtime is the rounded model."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def artifact_path(self, options: Any, out_dir: Path) -> Path:
        return Path(out_dir) / f"{options.get('name') or 'colour'}.json"

    def compile(self, model: Any, example_inputs: Any, options: Any, out_dir: Path) -> Any:
        shrink = [v for k, v in model.state_dict().items() if k.endswith("shrink")]
        path = self.artifact_path(options, out_dir)
        path.write_text(json.dumps({"shrink": float(shrink[0])}))
        return CompileResult(artifact=path, report={})

    def load(self, artifact: Path) -> Any:
        model = ColourDet()
        with torch.no_grad():
            model.body.shrink.fill_(json.loads(Path(artifact).read_text())["shrink"])
        model.body = _Round(model.body)
        return model.eval()

    def detect(self, program: Any, images: Any) -> Any:
        with torch.no_grad():
            return program({"img": images})


@attrs.frozen(kw_only=True)
class NoArgs:
    """No arguments."""


@attrs.frozen(kw_only=True)
class BackendArgs:
    """The colourmarch compile options."""

    name: str | None = arg(None, help="artifact name")
    out_dir: str | None = arg(None, help="output folder")


@hookimpl
def register_models(register):
    register("ColourDet", factory=ColourDet, schema=NoArgs)


@hookimpl
def register_converters(register):
    register("ToCalibration", factory=ToCalibration, schema=NoArgs)
    register("ToQAT", factory=ToQAT, schema=NoArgs)
    register("ToQuantized", factory=ToQuantized, schema=NoArgs)


@hookimpl
def register_compile_backends(register):
    register("colourmarch", factory=ColourBackend, schema=BackendArgs)


# --- data and config ---------------------------------------------------------------------------


def _make_data(root: Path, n: int = 8, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        img = np.full((SIZE, SIZE, 3), 120, np.uint8)
        img += rng.integers(0, 8, img.shape, dtype=np.uint8)
        taken = np.zeros((SIZE, SIZE), bool)
        for k in rng.permutation(3)[: int(rng.integers(1, 4))]:
            for _ in range(50):  # a free spot, so that boxes of other colours do not overlap
                w, h = (int(v) for v in rng.integers(14, 28, 2))
                x, y = int(rng.integers(0, SIZE - w)), int(rng.integers(0, SIZE - h))
                if not taken[y : y + h, x : x + w].any():
                    break
            taken[y : y + h, x : x + w] = True
            img[y : y + h, x : x + w] = COLOURS[k]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 10 + i,
                    "category_id": CATEGORIES[k]["id"],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        images.append({"id": 10 + i, "file_name": f"{i}.png", "width": SIZE, "height": SIZE})
    ann = root / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return root / "images", ann


CONFIG = """
task_name: colour
ckpt_dir: {root}/ckpt
seed: 3
channels_last: false
march: colourmarch
deploy_inputs: {{img: [1, 3, 64, 64]}}
vars:
  loader:
    type: DataLoader
    dataset: {{type: CocoFolder, data_path: "{images}", ann_file: "{ann}", transforms: [{{type: ToTensor}}]}}
    batch_size: 3
    collate_fn: collate_2d
  metric: {{type: COCODetectionMetric, ann_file: "{ann}", backend: pycocotools}}
  bp: {{type: MultiBatchProcessor, need_grad_update: false}}
  val: {{type: Validation, data_loader: "${{vars.loader}}", batch_processor: "${{vars.bp}}", callbacks: [{{type: MetricUpdater, metric_update_func: update_metric}}]}}
  ckpt: {{type: Checkpoint, save_dir: "${{ckpt_dir}}", mode: max, monitor_metric_key: mAP}}
  predictor: &pred
    type: Predictor
    model: {{type: ColourDet}}
    data_loader: ["${{vars.loader}}"]
    batch_processor: ${{vars.bp}}
    metrics: ${{vars.metric}}
    callbacks: [{{type: MetricUpdater, metric_update_func: update_metric}}]
val_data_loader: ${{vars.loader}}
float_trainer:
  type: Trainer
  model: {{type: ColourDet}}
  data_loader: ${{vars.loader}}
  optimizer: {{type: SGD, lr: 1.0}}
  batch_processor: {{type: MultiBatchProcessor, need_grad_update: true, loss_collector: collect_losses}}
  num_epochs: 1
  callbacks: ["${{vars.val}}", "${{vars.ckpt}}"]
  val_metrics: ${{vars.metric}}
calibration_trainer:
  type: Calibrator
  model: {{type: ColourDet}}
  model_convert_pipeline:
    type: ModelConvertPipeline
    converters: [{{type: LoadCheckpoint, checkpoint_path: "${{ckpt_dir}}/float-checkpoint-best.pth.tar"}}, {{type: ToCalibration}}]
  data_loader: ${{vars.loader}}
  num_steps: 2
  callbacks: ["${{vars.val}}", "${{vars.ckpt}}"]
  val_metrics: ${{vars.metric}}
qat_trainer:
  type: Trainer
  model: {{type: ColourDet}}
  model_convert_pipeline:
    type: ModelConvertPipeline
    converters: [{{type: ToQAT}}, {{type: LoadCheckpoint, checkpoint_path: "${{ckpt_dir}}/calibration-checkpoint-best.pth.tar"}}]
  data_loader: ${{vars.loader}}
  optimizer: {{type: SGD, lr: 1.0}}
  batch_processor: {{type: MultiBatchProcessor, need_grad_update: true, loss_collector: collect_losses}}
  num_epochs: 1
  callbacks: ["${{vars.val}}", "${{vars.ckpt}}"]
  val_metrics: ${{vars.metric}}
int_infer_trainer:
  type: Trainer
  model: {{type: ColourDet}}
  model_convert_pipeline:
    type: ModelConvertPipeline
    converters: [{{type: ToQAT}}, {{type: LoadCheckpoint, checkpoint_path: "${{ckpt_dir}}/qat-checkpoint-best.pth.tar"}}, {{type: ToQuantized}}]
  num_epochs: 0
  callbacks: ["${{vars.ckpt}}"]
float_predictor:
  <<: *pred
  model_convert_pipeline:
    type: ModelConvertPipeline
    converters: [{{type: LoadCheckpoint, checkpoint_path: "${{ckpt_dir}}/float-checkpoint-best.pth.tar"}}]
int_infer_predictor:
  <<: *pred
  model_convert_pipeline:
    type: ModelConvertPipeline
    converters: [{{type: ToQAT}}, {{type: LoadCheckpoint, checkpoint_path: "${{ckpt_dir}}/qat-checkpoint-best.pth.tar"}}, {{type: ToQuantized}}]
compile_cfg:
  march: colourmarch
  name: colour
"""

ALL = ["float", "calibration", "qat", "int_infer", "compile"]


@pytest.fixture(scope="module")
def host():
    import fcos_plugin_coco.plugin as coco_plugin
    from fcos_core.plugins import load_host

    return load_host(
        entry_points=False, plugins=[("coco", coco_plugin), ("val_standins", sys.modules[__name__])]
    )


@pytest.fixture(scope="module")
def pipeline(host, tmp_path_factory):
    """Data, config and a whole `fcos run` of it: (root, config path, summary.json)."""
    from fcos_core.config import load_config
    from fcos_core.engine.pipeline import run_pipeline
    from fcos_core.logging_setup import close_logging

    root = tmp_path_factory.mktemp("val")
    images, ann = _make_data(root / "data")
    config = root / "colour.yaml"
    config.write_text(CONFIG.format(root=root, images=images, ann=ann))
    cfg = load_config(config, host)
    try:
        assert run_pipeline(cfg, host, ALL, run_dir=str(root / "run")) == 0
    finally:
        close_logging()
    summary = json.loads((root / "run" / "summary.json").read_text())
    return root, config, summary


def _val(host, config, *args: str) -> int:
    from fcos_core.cli.main import main
    from fcos_core.logging_setup import close_logging

    try:
        return main(["val", str(config), *args], host=host)
    finally:
        close_logging()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ALL)
def test_val_equals_the_pipeline(host, pipeline, stage, capsys):
    root, config, summary = pipeline
    out = root / f"val-{stage}"
    assert _val(host, config, "--stage", stage, "--out", str(out)) == 0
    report = json.loads((out / "val.json").read_text())
    assert report["stage"] == stage and report["generator"] == "fcos val"
    assert report["metrics"] == summary[stage]["metrics"]
    # item 2: the run's summary carries the same per-class table, from the same evaluation
    assert report["per_class"] == summary[stage]["per_class"]
    assert 0.05 < summary[stage]["metrics"]["mAP"] < 0.95  # not a degenerate all-0 / all-1
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in printed
    assert "red" in printed and "gt boxes" in printed


@pytest.mark.slow
def test_stages_differ_and_classes_differ(pipeline):
    _, _, summary = pipeline
    assert summary["float"]["metrics"]["mAP"] != summary["int_infer"]["metrics"]["mAP"]
    aps = [r["AP"] for r in summary["float"]["per_class"]]
    assert len(set(aps)) == 3  # the shrink differs per class


@pytest.mark.slow
def test_report_files(host, pipeline):
    root, config, _summary = pipeline
    out = root / "report"
    assert _val(host, config, "--stage", "float", "--out", str(out), "--worst", "3") == 0
    names = {p.name for p in out.iterdir()}
    assert {
        "val.json",
        "coco_summary.txt",
        "per_class.csv",
        "pr_curves.png",
        "confusion_matrix.png",
        "confusion_matrix.csv",
        "worst",
        "log.jsonl",
    } <= names
    report = json.loads((out / "val.json").read_text())
    gt = json.loads(Path(report["ann_file"]).read_text())
    # per_class.csv: the table; its gt boxes counted directly from the json
    lines = (out / "per_class.csv").read_text().splitlines()
    assert lines[0] == "category_id,name,AP,AP50,AR100,gt_boxes"
    for line, cat in zip(lines[1:], CATEGORIES):
        fields = line.split(",")
        assert fields[:2] == [str(cat["id"]), cat["name"]]
        assert int(fields[5]) == sum(a["category_id"] == cat["id"] for a in gt["annotations"])
    # the confusion matrix: every ground-truth box is in its row once; every image has one
    # false positive scoring 0.4 >= 0.3, on background
    cm = np.asarray(report["confusion_matrix"]["counts"])
    assert cm.shape == (4, 4)
    assert cm[:3].sum() == len(gt["annotations"])
    assert cm[3].sum() == len(gt["images"])
    for name, size in (("pr_curves.png", (1280, 280)), ("confusion_matrix.png", None)):
        img = Image.open(out / name)
        if size:
            assert img.size == size  # 4 panels: all classes + 3 classes
        arr = np.asarray(img.convert("RGB")).astype(int)
        assert arr.std() > 10 and len(np.unique(arr.reshape(-1, 3), axis=0)) > 20
    worst = report["worst_images"]
    assert 1 <= len(worst) <= 3
    errors = [w["false_positives"] + w["missed"] for w in worst]
    assert errors == sorted(errors, reverse=True)
    drawn = Image.open(out / "worst" / worst[0]["file"])
    assert drawn.size == (512, 512)  # 64 px drawn 8x
    assert (out / "coco_summary.txt").read_text().count("Average") == 12
    # detections.json re-scored by pycocotools, per category, gives the per-class table
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    for row in report["per_class"]:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(report["ann_file"])
            ev = COCOeval(coco, coco.loadRes(str(out / "detections.json")), "bbox")
            ev.params.catIds = [row["category_id"]]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        assert [row["AP"], row["AP50"], row["AR100"]] == [ev.stats[0], ev.stats[1], ev.stats[8]]


@pytest.mark.slow
def test_other_data_folder_and_lmdb(host, pipeline):
    """--data: the same images as an image folder (+ --ann) and as a packed LMDB (its own
    ground truth) give the config's numbers."""
    from fcos_plugin_coco.packer import pack_coco

    root, config, summary = pipeline
    data = root / "data"
    assert (
        _val(
            host,
            config,
            "--stage",
            "int_infer",
            "--out",
            str(root / "d1"),
            "--data",
            str(data / "images"),
            "--ann",
            str(data / "instances.json"),
        )
        == 0
    )
    folder = json.loads((root / "d1" / "val.json").read_text())
    assert folder["metrics"] == summary["int_infer"]["metrics"]
    pack_coco(str(data / "images"), str(data / "instances.json"), str(root / "lmdb"))
    assert (
        _val(
            host,
            config,
            "--stage",
            "float",
            "--out",
            str(root / "d2"),
            "--data",
            str(root / "lmdb"),
        )
        == 0
    )
    lmdb = json.loads((root / "d2" / "val.json").read_text())
    assert lmdb["metrics"] == summary["float"]["metrics"]
    assert (root / "d2" / "ground_truth.json").is_file()


@pytest.mark.slow
def test_checkpoint_option(host, pipeline):
    root, config, summary = pipeline
    last = root / "ckpt" / "float-checkpoint-last.pth.tar"
    assert (
        _val(host, config, "--stage", "float", "--out", str(root / "c1"), "--checkpoint", str(last))
        == 0
    )
    report = json.loads((root / "c1" / "val.json").read_text())
    assert report["weights"] == str(last)
    assert report["metrics"] == summary["float"]["metrics"]  # one epoch: last is best


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["--stage", "int-infer"], "did you mean 'int_infer'"),
        (["--score-threshold", "2"], "--score-threshold must be a number in [0, 1]"),
        (["--ann", "x.json"], "--data"),
        (["--data", "/nonexistent/folder"], "is not a folder"),
        (["--checkpoint", "/nonexistent.pth.tar"], "does not exist"),
    ],
)
def test_user_errors_exit_2_and_write_nothing(host, pipeline, tmp_path, capsys, args, message):
    _root, config, _ = pipeline
    out = tmp_path / "out"
    assert _val(host, config, "--out", str(out), *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()  # checked before the run folder is made


@pytest.mark.slow
def test_never_writes_into_a_folder_with_files(host, pipeline, tmp_path, capsys):
    _root, config, _ = pipeline
    mine = tmp_path / "mine.txt"
    mine.write_text("the user's")
    assert _val(host, config, "--out", str(tmp_path)) == 2
    assert "not empty" in capsys.readouterr().err
    assert mine.read_text() == "the user's" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.slow
def test_default_run_folders_are_numbered(host, pipeline, monkeypatch, tmp_path):
    _root, config, _ = pipeline
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert _val(host, config, "--stage", "float") == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "colour").iterdir()) == [
        "val-float",
        "val-float-2",
    ]


def test_ground_truth_from_an_lmdb_equals_its_json(clean_coco, tmp_path):
    """An LMDB scored without --ann: its packed ground truth, crowd regions with their class."""
    from fcos_plugin_coco.packer import pack_coco
    from fcos_plugin_coco.val_cmd import gt_from_lmdb

    images, ann = clean_coco()
    pack_coco(images, ann, str(tmp_path / "lmdb"))
    src = json.loads(Path(ann).read_text())
    got = gt_from_lmdb(str(tmp_path / "lmdb"))
    assert sorted(c["id"] for c in got["categories"]) == sorted(c["id"] for c in src["categories"])
    assert {i["id"]: (i["width"], i["height"]) for i in got["images"]} == {
        i["id"]: (i["width"], i["height"]) for i in src["images"]
    }

    def key(a):
        return (a["image_id"], a["category_id"], a["iscrowd"], *a["bbox"])

    mine, theirs = sorted(map(key, got["annotations"])), sorted(map(key, src["annotations"]))
    assert [k[:3] for k in mine] == [k[:3] for k in theirs]
    np.testing.assert_allclose(
        [k[3:] for k in mine], [k[3:] for k in theirs], atol=1e-4
    )  # the LMDB stores float32 boxes
    assert any(a["iscrowd"] for a in got["annotations"])
