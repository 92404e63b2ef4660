"""The detection listing and drawing shared by `fcos predict` and a backend's `fcos infer`."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from fcos_core.cli.detections_output import COLOURS, draw_detections, print_detections

RESULTS = [{"image": "a.jpg", "detections": [
    {"label": 1, "name": "car", "score": 0.9, "box": [1.0, 2.0, 10.0, 12.0]},
    {"label": 3, "score": 0.5, "box": [0.0, 0.0, 4.0, 4.0]},
]}]


def test_listing_names_or_labels_and_limits(capsys):
    print_detections(RESULTS, as_json=False, max_per_image=1)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "a.jpg: 2 detection(s)"
    assert out[1].split() == ["car", "0.900", "[1.0,", "2.0,", "10.0,", "12.0]"]
    assert len(out) == 2  # the second detection is cut by max_per_image
    print_detections(RESULTS, as_json=False)
    assert capsys.readouterr().out.splitlines()[2].split()[0] == "3"  # no name: the label


def test_json_is_the_records(capsys):
    print_detections(RESULTS, as_json=True)
    assert json.loads(capsys.readouterr().out) == RESULTS


def test_drawing_puts_label_coloured_boxes_on_the_image(tmp_path):
    rgb = np.zeros((20, 20, 3), np.uint8)
    out = tmp_path / "vis" / "a_det.png"
    draw_detections(rgb, RESULTS[0]["detections"], out)
    img = np.asarray(Image.open(out))
    assert img.shape == (20, 20, 3)
    assert tuple(img[2, 5]) == COLOURS[1]  # top edge of the first box
