"""``fcos runs``: run folders' summary.json side by side; user errors exit 2."""

from __future__ import annotations

import json

from fcos_core.cli.main import main


def _run(folder, stages):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(stages))
    return folder


def _stage(map_, ap50, seconds, **extra):
    return {
        "metrics": {"mAP": map_, "AP50": ap50},
        "seconds": seconds,
        "checkpoint": None,
        "source": "predictor",
        **extra,
    }


def test_side_by_side(toy_host, tmp_path, capsys):
    stop = {
        "monitor": "mAP",
        "mode": "max",
        "best": 0.4,
        "best_epoch": 3,
        "stopped_epoch": 6,
        "patience": 3,
        "min_delta": 0.0,
    }
    a = _run(
        tmp_path / "a",
        {"float": _stage(0.4, 0.7, 65.0, early_stopping=stop), "qat": _stage(0.38, 0.69, 5.0)},
    )
    b = _run(tmp_path / "b", {"float": _stage(0.45, 0.6, 3725.0)})
    assert main(["runs", str(a), str(b), "--metrics", "mAP,AP50"], host=toy_host) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["stage", "a", "b"]
    assert ["float", "mAP", "0.4000", "0.4500*"] in rows
    assert ["float", "AP50", "0.7000*", "0.6000"] in rows
    assert ["float", "time", "1:05", "1:02:05"] in rows
    assert ["float", "stopped", "epoch", "6", "(best", "3)", "-"] in rows
    assert ["qat", "mAP", "0.3800", "-"] in rows  # run b has no qat stage
    assert main(["runs", str(a), str(b), "--json"], host=toy_host) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["a"]["float"] == {"mAP": 0.4, "seconds": 65.0, "early_stopping": stop}
    assert "qat" not in got["b"]


def test_same_folder_names_use_paths(toy_host, tmp_path, capsys):
    x = _run(tmp_path / "x" / "run", {"float": _stage(0.1, 0.2, 1.0)})
    y = _run(tmp_path / "y" / "run", {"float": _stage(0.3, 0.2, 1.0)})
    assert main(["runs", str(x), str(y)], host=toy_host) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert str(x) in head and str(y) in head


def test_user_errors(toy_host, tmp_path, capsys):
    assert main(["runs", str(tmp_path / "nope")], host=toy_host) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["runs", str(tmp_path / "empty")], host=toy_host) == 2
    assert "summary.json does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text("{not json")
    assert main(["runs", str(bad)], host=toy_host) == 2
    assert "cannot read it as JSON" in capsys.readouterr().err
    good = _run(tmp_path / "good", {"float": _stage(0.1, 0.2, 1.0)})
    assert main(["runs", str(good), "--metrics", "map"], host=toy_host) == 2
    err = capsys.readouterr().err
    assert "did you mean 'mAP'" in err and "Traceback" not in err
