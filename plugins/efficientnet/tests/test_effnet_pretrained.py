"""``pretrained: path``: torchvision and fcos state dicts load with an honest report."""

from __future__ import annotations

import pytest
import torch
import torchvision

from fcos_core.errors import FcosUserError
from fcos_plugin_efficientnet.model import EfficientNet, build_efficientnet


@pytest.fixture(scope="module")
def tv_b0():
    torch.manual_seed(0)
    return torchvision.models.efficientnet_b0().eval()


@pytest.fixture
def tv_file(tmp_path, tv_b0):
    path = tmp_path / "efficientnet_b0_tv.pth"
    torch.save(tv_b0.state_dict(), path)
    return str(path)


def test_torchvision_file_reproduces_torchvision(tv_file, tv_b0):
    model = build_efficientnet(
        "b0", include_top=True, activation="swish", use_se_block=True, pretrained=tv_file
    ).eval()
    report = model.pretrained_report
    assert report.source_format == "torchvision" and report.path == tv_file
    assert len(report.matched) == len(tv_b0.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), tv_b0(x), atol=1e-5, rtol=0)


def test_seed_backbone_from_torchvision_reports_se_and_top_as_unexpected(tv_file, tv_b0, caplog):
    with caplog.at_level("INFO", logger="fcos_plugin_efficientnet.model"):
        model = build_efficientnet(
            "b0", include_top=False, activation="relu", use_se_block=False, pretrained=tv_file
        )
    report = model.pretrained_report
    tv_keys = set(tv_b0.state_dict())
    se_keys = {k for k in tv_keys if ".fc1." in k or ".fc2." in k}
    top_keys = {k for k in tv_keys if k.startswith(("features.8.", "classifier."))}
    assert set(report.unexpected) == se_keys | top_keys  # reported with torchvision's names
    assert not report.missing and not report.shape_mismatch
    assert len(report.matched) == len(model.state_dict())
    assert "unexpected" in caplog.text and tv_file in caplog.text
    # the loaded tensors are torchvision's
    assert torch.equal(
        model.stages[3][1].depthwise.conv.weight, tv_b0.features[4][1].block[1][0].weight
    )


def test_own_checkpoint_round_trip_with_wrappers(tmp_path):
    src = EfficientNet("b0")
    with torch.no_grad():
        src.stem.bn.running_mean.uniform_()
    ckpt = {
        "state_dict": {f"module.backbone.{k}": v for k, v in src.state_dict().items()},
        "epoch": 3,
    }
    ckpt["state_dict"]["module.neck.some.weight"] = torch.zeros(2)
    path = tmp_path / "detector.pth.tar"
    torch.save(ckpt, path)
    model = build_efficientnet("b0", pretrained=str(path))
    report = model.pretrained_report
    assert report.source_format == "fcos"
    assert report.unexpected == ["neck.some.weight"]
    assert not report.missing
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def test_other_variant_reports_shape_mismatches(tv_file):
    model = build_efficientnet(
        "b3", include_top=True, activation="swish", use_se_block=True, pretrained=tv_file
    )
    report = model.pretrained_report
    assert report.shape_mismatch and report.missing
    assert all(len(file) == len(own) for _, file, own in report.shape_mismatch)
    assert "other shapes" in report.summary()


def test_missing_file_names_the_path(tmp_path):
    path = str(tmp_path / "nope.pth")
    with pytest.raises(FcosUserError, match=r"nope.pth") as info:
        build_efficientnet("b0", pretrained=path)
    assert info.value.hint


def test_not_a_state_dict_and_unrelated_weights_are_user_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(FcosUserError, match=r"junk.pth"):
        build_efficientnet("b0", pretrained=str(junk))
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    with pytest.raises(FcosUserError, match="match no parameter"):
        build_efficientnet("b0", pretrained=str(other))


def test_files_are_loaded_without_running_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(FcosUserError, match="cannot read"):
        build_efficientnet("b0", pretrained=str(path))
