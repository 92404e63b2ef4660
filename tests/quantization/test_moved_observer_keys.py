"""A config written for the earlier flat observer keys (``Float2Calibration: {percentile: ...}``)
is refused by ``fcos check`` with the new form spelled out, value included."""

from __future__ import annotations

from pathlib import Path

import pytest

from fcos_core.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
NEW = "{type: Float2Calibration, activation_observer: {type: percentile, percentile: 99.99}}"


@pytest.mark.parametrize(
    "old, expected",
    [
        (
            "{type: Float2Calibration, activation_observer: percentile, percentile: 99.9}",
            "write activation_observer: {type: percentile, percentile: 99.9} instead",
        ),
        (
            "{type: Float2Calibration, activation_observer: kl, kl_stride: 4}",
            "write activation_observer: {type: <observer>, kl_stride: 4} instead",
        ),
    ],
)
def test_old_observer_keys_name_the_new_form(tmp_path, capsys, old, expected):
    text = (ROOT / "configs" / "fcos_b0_custom.yaml").read_text()
    assert NEW in text
    cfg = tmp_path / "old.yaml"
    cfg.write_text(text.replace(NEW, old))
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "no longer takes" in err and expected in err
    assert "calibration_trainer.model_convert_pipeline.converters[1]" in err
