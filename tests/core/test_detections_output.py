"""The detection listing and drawing shared by `fcos predict` and a backend's `fcos infer`."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from fcos_core.cli.detections_output import COLOURS, draw_detections, draw_scale, print_detections

RESULTS = [
    {
        "image": "a.jpg",
        "detections": [
            {"label": 1, "name": "car", "score": 0.9, "box": [1.0, 2.0, 10.0, 12.0]},
            {"label": 3, "score": 0.5, "box": [0.0, 0.0, 4.0, 4.0]},
        ],
    }
]


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
    k = draw_scale(20, 20)  # a small image is drawn enlarged so that its labels are readable
    assert k == 26 and img.shape == (20 * k, 20 * k, 3)
    assert tuple(img[2 * k, 5 * k]) == COLOURS[1]  # top edge of the first box


def test_save_vis_names_are_unique_and_never_overwrite(tmp_path):
    from fcos_core.cli.detections_output import save_vis

    vis = tmp_path / "vis"
    vis.mkdir()
    mine = vis / "x_det.png"
    mine.write_bytes(b"a file of the user's")
    red, green = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)
    red[..., 0], green[..., 1] = 255, 255
    a = save_vis(red, [], vis, str(tmp_path / "a" / "x.jpg"))
    b = save_vis(green, [], vis, str(tmp_path / "b" / "x.jpg"))
    assert mine.read_bytes() == b"a file of the user's"
    assert a != b and {a.name, b.name} == {"x_det-2.png", "x_det-3.png"}
    assert tuple(np.asarray(Image.open(a))[0, 0]) == (255, 0, 0)
    assert tuple(np.asarray(Image.open(b))[0, 0]) == (0, 255, 0)


def test_save_vis_into_a_file_is_a_user_error(tmp_path):
    import pytest

    from fcos_core.cli.detections_output import prepare_vis_folder
    from fcos_core.errors import FcosUserError

    f = tmp_path / "taken"
    f.write_bytes(b"x")
    with pytest.raises(FcosUserError, match="is a file"):
        prepare_vis_folder(f)
    assert f.read_bytes() == b"x"
