"""`fcos export` (three formats, each reloaded and compared) and `fcos predict --save-vis`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).parents[2]


def _fcos(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fcos_core", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt,suffix", [("torchscript", ".pt"), ("export", ".pt2"), ("onnx", ".onnx")]
)
def test_export_formats_reload_and_match(fmt, suffix, tmp_path):
    out = tmp_path / f"m{suffix}"
    run = _fcos(
        "export",
        str(ROOT / "configs" / "fcos_b0_demo.yaml"),
        "--format",
        fmt,
        "--out",
        str(out),
        "--allow-untrained",
        f"ckpt_dir={tmp_path / 'none'}",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.exists() and out.stat().st_size > 100_000
    assert "untrained" in run.stdout and "max |difference| to the model" in run.stdout
    assert os.listdir(tmp_path) == [out.name]  # no temporary file left


@pytest.mark.slow
def test_export_lists_formats_and_rejects_a_missing_checkpoint(tmp_path):
    listed = _fcos("export", "--list-formats", cwd=tmp_path)
    assert listed.returncode == 0
    assert {line.split()[0] for line in listed.stdout.splitlines()} == {
        "torchscript",
        "export",
        "onnx",
    }
    bad = _fcos(
        "export",
        str(ROOT / "configs" / "fcos_b0_demo.yaml"),
        "--checkpoint",
        str(tmp_path / "nope.pth.tar"),
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_predict_draws_detections(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(96, 160), (200, 120)]):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        img[20:60, 30:80] = (220, 40, 40)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(img).save(path)
        paths.append(str(path))
    run = _fcos(
        "predict",
        str(ROOT / "configs" / "fcos_b0_demo.yaml"),
        "--images",
        *paths,
        "--save-vis",
        str(tmp_path / "vis"),
        "--score-threshold",
        "0",
        "--json",
        "--allow-untrained",
        f"ckpt_dir={tmp_path / 'none'}",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(run.stdout)
    assert [r["image"] for r in results] == paths
    for r, (h, w) in zip(results, [(96, 160), (200, 120)]):
        from fcos_core.cli.detections_output import draw_scale

        vis = Image.open(r["vis"])
        k = draw_scale(h, w)  # drawn on the original image, enlarged when small
        assert vis.size == (w * k, h * k) and k > 1
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h  # mapped back and clipped
    missing = _fcos(
        "predict",
        str(ROOT / "configs" / "fcos_b0_demo.yaml"),
        "--images",
        str(tmp_path / "nope.jpg"),
        "--allow-untrained",
        f"ckpt_dir={tmp_path / 'none'}",
        cwd=tmp_path,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


# --- no untrained model by accident, no lost files (issue 14); in-process for speed ---------

DEMO = str(ROOT / "configs" / "fcos_b0_demo.yaml")


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("command", ["export", "predict"])
def test_a_missing_default_checkpoint_is_refused(command, tmp_path, monkeypatch, capsys):
    from fcos_core.cli.main import main

    monkeypatch.chdir(tmp_path)
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    before = _tree(tmp_path)
    ckpt_dir = tmp_path / "ckpts"
    extra = ["--images", str(img)] if command == "predict" else []
    assert main([command, DEMO, f"ckpt_dir={ckpt_dir}", *extra]) == 2
    err = capsys.readouterr().err
    assert str(ckpt_dir / "float-checkpoint-best.pth.tar") in err
    assert "--checkpoint" in err and "--allow-untrained" in err and "Traceback" not in err
    assert _tree(tmp_path) == before and not ckpt_dir.exists()  # nothing written


@pytest.mark.slow
def test_export_never_replaces_a_file_without_overwrite(tmp_path, monkeypatch, capsys):
    from fcos_core.cli.main import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "mine.pt"
    out.write_bytes(b"the user's model")
    argv = [
        "export",
        DEMO,
        "--format",
        "torchscript",
        "--out",
        str(out),
        "--allow-untrained",
        f"ckpt_dir={tmp_path / 'none'}",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    assert out.read_bytes() == b"the user's model" and os.listdir(tmp_path) == ["mine.pt"]
    assert main([*argv, "--overwrite"]) == 0
    assert out.read_bytes() != b"the user's model" and os.listdir(tmp_path) == ["mine.pt"]
    import torch

    torch.jit.load(str(out))  # a whole TorchScript file


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["verification", "exception"])
def test_a_failed_export_leaves_no_file(failure, tmp_path, monkeypatch, capsys):
    import fcos_core.cli.export_cmd as export_cmd
    from fcos_core.cli.main import main

    monkeypatch.chdir(tmp_path)
    real = export_cmd.WRITERS["torchscript"]
    written = []

    def broken(model, x, path):
        run = real(model, x, path)
        written.append(path)
        assert path.exists() and path.parent == tmp_path / "out"  # the temporary file
        if failure == "exception":
            raise RuntimeError("exporter crashed")
        return lambda inp: tuple(o + 1 for o in run(inp))

    monkeypatch.setitem(export_cmd.WRITERS, "torchscript", broken)
    argv = [
        "export",
        DEMO,
        "--format",
        "torchscript",
        "--out",
        str(tmp_path / "out" / "m.pt"),
        "--allow-untrained",
        f"ckpt_dir={tmp_path / 'none'}",
    ]
    if failure == "exception":
        with pytest.raises(RuntimeError, match="exporter crashed"):
            main(argv)
    else:
        assert main(argv) == 2
        assert "differs from the model" in capsys.readouterr().err
    assert written and os.listdir(tmp_path / "out") == []  # neither the temp nor m.pt


def test_predict_save_vis_keeps_same_stem_images_apart(tmp_path, monkeypatch, capsys):
    from fcos_core.cli.main import main

    monkeypatch.chdir(tmp_path)
    paths = []
    for sub, colour in (("a", (200, 0, 0)), ("b", (0, 200, 0))):
        (tmp_path / sub).mkdir()
        img = np.zeros((48, 64, 3), np.uint8)
        img[:] = colour
        Image.fromarray(img).save(tmp_path / sub / "x.png")
        paths.append(str(tmp_path / sub / "x.png"))
    vis = tmp_path / "vis"
    vis.mkdir()
    (vis / "x_det.png").write_bytes(b"earlier drawing")
    assert (
        main(
            [
                "predict",
                DEMO,
                "--images",
                *paths,
                "--save-vis",
                str(vis),
                "--json",
                "--score-threshold",
                "2",
                "--allow-untrained",
                f"ckpt_dir={tmp_path / 'none'}",
            ]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert (vis / "x_det.png").read_bytes() == b"earlier drawing"
    assert len({r["vis"] for r in results}) == 2
    for r, colour in zip(results, ((200, 0, 0), (0, 200, 0))):
        assert tuple(np.asarray(Image.open(r["vis"]).convert("RGB"))[5, 5]) == colour
