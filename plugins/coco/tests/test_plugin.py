"""Registration: names, torch-free plugin and schema modules, command defaults."""

from __future__ import annotations

import attrs


def test_registered_components(fcos_host, fcos_schema_check):
    host = fcos_host(distributions=["fcos-plugin-coco"])
    r = host.registries
    assert {"Coco", "CocoFolder"} <= set(r["datasets"].names())
    assert {
        "Resize",
        "RandomCrop",
        "Pad",
        "RandomFlip",
        "AugmentHSV",
        "ToTensor",
        "Normalize",
    } <= set(r["transforms"].names())
    assert "collate_2d" in r["collates"] and r["collates"].get("collate_2d").schema is None
    assert "COCODetectionMetric" in r["metrics"]
    assert {"pack-coco", "demo-data"} <= set(r["commands"].names())
    for kind in ("datasets", "transforms", "collates", "metrics", "commands"):
        for entry in r[kind]:
            if entry.plugin == "coco":
                assert callable(entry.load()), entry.name
                assert entry.doc, entry.name
                fcos_schema_check(kind, entry.name, host=host)


def test_plugin_and_schema_import_without_torch(fcos_torch_free):
    fcos_torch_free(
        "fcos_plugin_coco.plugin",
        "fcos_plugin_coco.schema",
        forbidden=("torch", "lmdb", "pycocotools", "numpy", "PIL"),
    )


def test_demo_command_defaults_match_demo_params():
    import argparse

    from fcos_plugin_coco.demo.generate import DemoParams
    from fcos_plugin_coco.plugin import demo_args

    p = argparse.ArgumentParser()
    demo_args(p)
    args = vars(p.parse_args(["--out", "x"]))
    for field in attrs.fields(DemoParams):
        assert args[field.name] == field.default, field.name
