"""FCOSMultiStrideFilter against a plain reference: sigmoid everything, threshold, batched_nms."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms

from fcos_core.models.post_process import FCOSMultiStrideFilter

STRIDES = [8, 16, 32]


def reference_detect(
    outputs,
    strides,
    *,
    threshold,
    score_threshold,
    nms_pre,
    iou_threshold,
    max_per_img,
    clamp_shape,
    bbox_upscaled=False,
):
    """Score every (position, class), keep logit > threshold and score > score_threshold,
    top nms_pre per level, decode, clamp, class-wise NMS, keep max_per_img."""
    s = len(strides)
    cls, box, ctr = outputs[:s], outputs[s : 2 * s], outputs[2 * s : 3 * s]
    results = []
    for b in range(cls[0].shape[0]):
        all_boxes, all_scores, all_labels = [], [], []
        for lvl, stride in enumerate(strides):
            c = cls[lvl][b]
            num_classes, h, w = c.shape
            logits = c.permute(1, 2, 0).reshape(-1, num_classes)  # [HW, C]
            scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(ctr[lvl][b].reshape(-1, 1)))
            ok = (logits > threshold) & (scores > score_threshold)
            pos, lab = torch.nonzero(ok, as_tuple=True)
            sc = scores[pos, lab]
            if sc.numel() > nms_pre:
                sc, top = sc.topk(nms_pre)
                pos, lab = pos[top], lab[top]
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            px = (xs.reshape(-1) * stride + stride // 2).float()[pos]
            py = (ys.reshape(-1) * stride + stride // 2).float()[pos]
            d = box[lvl][b].permute(1, 2, 0).reshape(-1, 4)[pos]
            if not bbox_upscaled:
                d = d * stride
            bx = torch.stack([px - d[:, 0], py - d[:, 1], px + d[:, 2], py + d[:, 3]], 1)
            all_boxes.append(bx)
            all_scores.append(sc)
            all_labels.append(lab)
        bx, sc, lab = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
        hh, ww = clamp_shape
        bx[:, 0::2] = bx[:, 0::2].clamp(0, ww)
        bx[:, 1::2] = bx[:, 1::2].clamp(0, hh)
        keep = batched_nms(bx, sc, lab, iou_threshold)[:max_per_img]
        results.append({"boxes": bx[keep], "scores": sc[keep], "labels": lab[keep]})
    return results


def random_outputs(batch=2, num_classes=5, size=64, seed=0, logit_shift=-2.0):
    g = torch.Generator().manual_seed(seed)
    cls, box, ctr = [], [], []
    for s in STRIDES:
        h = w = size // s
        cls.append(torch.randn(batch, num_classes, h, w, generator=g) * 1.5 + logit_shift)
        box.append(torch.rand(batch, 4, h, w, generator=g) * 3)
        ctr.append(torch.randn(batch, 1, h, w, generator=g))
    return (*cls, *box, *ctr)


def _assert_same(got, ref):
    assert len(got) == len(ref)
    for g_, r_ in zip(got, ref):
        assert g_["boxes"].shape == r_["boxes"].shape
        # both are sorted by decreasing score (NMS output order); random scores have no ties.
        # Scores may differ in the last bit (vectorised vs tail-loop sigmoid), nothing else.
        torch.testing.assert_close(g_["scores"], r_["scores"], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(g_["labels"], r_["labels"], rtol=0, atol=0)
        torch.testing.assert_close(g_["boxes"], r_["boxes"], rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "params",
    [
        dict(),
        dict(nms_pre=7, max_per_img=5),
        dict(threshold=-1.0, score_threshold=0.2, iou_threshold=0.3),
        dict(max_shape=(40, 50), bbox_upscaled=True),
    ],
)
def test_detect_equals_plain_reference(seed, params):
    params = dict(params)
    upscaled = params.pop("bbox_upscaled", False)
    pp = FCOSMultiStrideFilter(STRIDES, **params)
    outputs = random_outputs(seed=seed, size=96 if seed % 2 else 64)
    if upscaled:
        s = len(STRIDES)
        outputs = (
            *outputs[:s],
            *[b * st for b, st in zip(outputs[s : 2 * s], STRIDES)],
            *outputs[2 * s :],
        )
    image_size = (96, 96) if seed % 2 else (64, 64)
    got = pp(outputs, image_size, bbox_upscaled=upscaled)
    ref = reference_detect(
        outputs,
        STRIDES,
        threshold=pp.threshold,
        score_threshold=pp.score_threshold,
        nms_pre=pp.nms_pre,
        iou_threshold=pp.iou_threshold,
        max_per_img=pp.max_per_img,
        clamp_shape=pp.max_shape or image_size,
        bbox_upscaled=upscaled,
    )
    _assert_same(got, ref)
    assert sum(len(r["scores"]) for r in ref) > 0  # the case exercises real detections
    for r in got:
        assert r["boxes"].dtype == torch.float32 and r["labels"].dtype == torch.int64


def test_compile_outputs_fixed_shape_and_decodable():
    outputs = random_outputs(seed=9)
    comp = FCOSMultiStrideFilter(STRIDES, for_compile=True)
    fixed = comp(outputs)
    s = len(STRIDES)
    assert len(fixed) == 4 * s
    for i in range(3 * s):
        assert fixed[i] is outputs[i]  # head outputs unchanged
    for lvl in range(s):
        ml = fixed[3 * s + lvl]
        assert ml.shape == (2, 1, *outputs[lvl].shape[-2:])
        torch.testing.assert_close(ml, outputs[lvl].max(1, keepdim=True).values)
    # the host-side decoder gives the same detections from the compile tuple
    dec = FCOSMultiStrideFilter(STRIDES)
    _assert_same(comp.detect(fixed, (64, 64)), dec(outputs, (64, 64)))


def test_prefilter_drops_positions_below_threshold():
    outputs = list(random_outputs(seed=1, logit_shift=-10.0))  # nothing passes
    pp = FCOSMultiStrideFilter(STRIDES, score_threshold=0.0)
    assert all(len(r["scores"]) == 0 for r in pp(outputs, (64, 64)))
    outputs[0] = outputs[0].clone()
    outputs[0][0, 2, 3, 4] = 0.0  # one pair above logit(0.05): exactly one detection
    res = pp(outputs, (64, 64))
    assert len(res[0]["scores"]) == 1 and len(res[1]["scores"]) == 0
    assert res[0]["labels"].item() == 2
    d = outputs[3][0, :, 3, 4] * 8
    x, y = 4 * 8 + 4, 3 * 8 + 4
    want = torch.stack([x - d[0], y - d[1], x + d[2], y + d[3]]).clamp(0, 64)
    torch.testing.assert_close(res[0]["boxes"][0], want)
    expect = torch.sqrt(torch.sigmoid(torch.tensor(0.0)) * torch.sigmoid(outputs[6][0, 0, 3, 4]))
    torch.testing.assert_close(res[0]["scores"][0], expect)


def test_bad_arguments():
    with pytest.raises(ValueError, match="strides"):
        FCOSMultiStrideFilter([16, 8])
    with pytest.raises(ValueError, match="max_shape"):
        FCOSMultiStrideFilter([8], max_shape=(0, 5))
    with pytest.raises(ValueError, match="iou_threshold"):
        FCOSMultiStrideFilter([8], iou_threshold=0.0)
