"""The compiled program equals the integer model bit for bit, at every opt level and input
source (the acceptance test of the compile backend)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fcos_plugin_nash_e.backend import NashEBackend

LEVELS = ("O0", "O1", "O2", "O3")
N_IMAGES = 20


def _bits_equal(ref: torch.Tensor, out: np.ndarray) -> bool:
    r = ref.detach().numpy()
    if r.dtype != out.dtype or r.shape != out.shape:
        return False
    if r.dtype == np.float32:  # compare the bit patterns, not the values
        return np.array_equal(r.view(np.int32), out.view(np.int32))
    return np.array_equal(r, out)


def _compile(tmp_path, model, shape, level, source="ddr"):
    backend = NashEBackend()
    opts = {
        "name": f"m_{level}_{source}",
        "out_dir": str(tmp_path),
        "opt": level,
        "hbm": str(tmp_path / f"m_{level}_{source}.hbm"),
        "layer_details": False,
        "input_source": [source],
    }
    result = backend.compile(model, {"img": torch.zeros(shape)}, opts, tmp_path)
    return backend, backend.load(result.artifact)


@pytest.fixture(scope="module")
def detector(nash):
    return nash.MiniDetector(
        nash.make_mini_fcos(seed=3, num_classes=5, dequant=False), [4, 8]
    ).eval()


@pytest.fixture(scope="module")
def images(nash):
    return nash.random_images(N_IMAGES, (64, 64), seed=7)


@pytest.mark.parametrize("level", LEVELS)
def test_detector_ddr_input_bit_exact(tmp_path, nash, detector, images, level):
    x = nash.to_float_input(images)
    with torch.no_grad():
        ref = detector(x)
    backend, prog = _compile(tmp_path, detector, (1, 3, 64, 64), level)
    out = backend.run(prog, {"img": x})
    assert len(out) == len(ref) == 4 * 2  # cls, box, ctr, max_logit per stride
    for r, o in zip(ref, out):
        assert o.dtype == np.int16
        assert _bits_equal(r, o)
    # the values are not trivial: both signs, some saturation in the int16 range is allowed
    assert any((o != 0).mean() > 0.3 for o in out)


@pytest.mark.parametrize("level", ["O0", "O3"])
def test_detector_pyramid_input_bit_exact(tmp_path, nash, detector, images, level):
    """Pyramid frames (uint8 YUV444) give exactly the float pipeline's (yuv-128)/128 result."""
    with torch.no_grad():
        ref = detector(nash.to_float_input(images))
    backend, prog = _compile(tmp_path, detector, (1, 3, 64, 64), level, source="pyramid")
    out = backend.run(prog, {"img": list(images)})
    for r, o in zip(ref, out):
        assert _bits_equal(r, o)


def test_nv12_frames_equal_chroma_repeated_yuv444(tmp_path, nash, detector, images):
    backend, prog = _compile(tmp_path, detector, (1, 3, 64, 64), "O2", source="pyramid")
    yuv = images[0]
    uv = np.stack((yuv[1, ::2, ::2], yuv[2, ::2, ::2]), axis=-1)  # subsampled chroma
    nv12 = np.concatenate((yuv[0], uv.reshape(32, 64)), axis=0)  # [H*3/2, W] buffer
    expected = np.stack(
        (
            yuv[0],
            np.repeat(np.repeat(uv[..., 0], 2, 0), 2, 1),
            np.repeat(np.repeat(uv[..., 1], 2, 0), 2, 1),
        )
    )
    with torch.no_grad():
        ref = detector(nash.to_float_input(expected[None]))
    for frame in (nv12, {"y": yuv[0], "uv": uv}):
        out = backend.run(prog, {"img": frame})
        assert all(_bits_equal(r, o) for r, o in zip(ref, out))


@pytest.mark.parametrize("level", LEVELS)
def test_op_zoo_dequantized_outputs_bit_exact(tmp_path, nash, level):
    """Grouped/7x7 convs, ceil-mode pools, cat, requantize, int16-input conv, int32 outputs
    with per-channel dequantization: float32 outputs identical bit patterns."""
    model = nash.make_op_zoo(seed=5, dequant=True).eval()
    imgs = nash.random_images(N_IMAGES, (62, 62), seed=11)
    x = nash.to_float_input(imgs)
    with torch.no_grad():
        ref = model(x)
    backend, prog = _compile(tmp_path, model, (1, 3, 62, 62), level)
    out = backend.run(prog, {"img": x})
    assert [o.dtype for o in out] == [np.float32] * 4
    for r, o in zip(ref, out):
        assert _bits_equal(r, o)


def test_float_input_quantize_matches_rounding_ties(tmp_path, nash):
    """Inputs that are not multiples of 1/128 (incl. exact .5 ties) round like the model."""
    model = nash.make_op_zoo(seed=2, dequant=False).eval()
    rng = np.random.default_rng(0)
    x = rng.integers(-300, 300, size=(3, 3, 62, 62)).astype(np.float32) / 256.0  # many ties
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    backend, prog = _compile(tmp_path, model, (1, 3, 62, 62), "O1")
    out = backend.run(prog, {"img": x})
    assert all(_bits_equal(r, o) for r, o in zip(ref, out))
