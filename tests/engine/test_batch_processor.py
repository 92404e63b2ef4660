"""MultiBatchProcessor (clipping, several batches, NaN check) and LossShow."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fcos_core.engine.batch_processor import MultiBatchProcessor
from fcos_core.engine.errors import NonFiniteLossError
from fcos_core.engine.loss_show import LossShow


class _Quad(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([3.0, -4.0]))

    def forward(self, batch):
        return {"a": (self.w * batch["x"]).sum() ** 2, "b": self.w.abs().sum() * batch["s"]}


def _batch(x=1.0, s=1.0):
    return {"x": torch.tensor([x, x]), "s": torch.tensor(s)}


def test_clipping_matches_torch():
    m1, m2 = _Quad(), _Quad()
    opt1, opt2 = (torch.optim.SGD(m.parameters(), lr=0.01) for m in (m1, m2))
    MultiBatchProcessor(grad_clip_max_norm=0.5)(m1, _batch(), torch.device("cpu"), opt1)
    opt2.zero_grad()
    out = m2(_batch())
    (out["a"] + out["b"]).backward()
    torch.nn.utils.clip_grad_norm_(m2.parameters(), 0.5)
    opt2.step()
    torch.testing.assert_close(m1.w, m2.w)


def test_several_batches_accumulate_before_one_step():
    m1, m2 = _Quad(), _Quad()
    opt1, opt2 = (torch.optim.SGD(m.parameters(), lr=0.01) for m in (m1, m2))
    outs = MultiBatchProcessor()(m1, [_batch(1.0), _batch(2.0)], torch.device("cpu"), opt1)
    assert isinstance(outs, list) and len(outs) == 2
    opt2.zero_grad()
    for b in (_batch(1.0), _batch(2.0)):
        o = m2(b)
        (o["a"] + o["b"]).backward()
    opt2.step()
    torch.testing.assert_close(m1.w, m2.w)


def test_non_finite_loss_names_the_term_and_spares_the_weights():
    m = _Quad()
    before = m.w.detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    with pytest.raises(NonFiniteLossError) as err:
        MultiBatchProcessor()(m, _batch(s=math.inf), torch.device("cpu"), opt)
    assert err.value.term == "b" and "loss term 'b' is inf" in str(err.value)
    assert torch.equal(m.w, before)


def test_eval_mode_has_no_grad_and_loss_show_averages():
    m = _Quad()
    out = MultiBatchProcessor(need_grad_update=False)(m, _batch(), torch.device("cpu"))
    assert not out["a"].requires_grad
    show = LossShow()
    show.update(None, {"a": torch.tensor(1.0), "b": torch.tensor(4.0)})
    show.update(None, {"a": torch.tensor(3.0), "b": torch.tensor(2.0)})
    assert show.compute() == pytest.approx({"a": 2.0, "b": 3.0, "loss": 5.0})
    show.reset()
    assert show.compute() == {}


def test_bfloat16_autocast_step_on_cpu():
    net = nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = net.weight.detach().clone()
    seen = {}

    def model(batch):
        out = net(batch["x"])
        seen["dtype"] = out.dtype
        return {"l": out.float().pow(2).mean()}

    MultiBatchProcessor(amp=True, amp_dtype="bfloat16")(
        model, {"x": torch.randn(3, 4)}, torch.device("cpu"), opt
    )
    assert seen["dtype"] == torch.bfloat16 and not torch.equal(net.weight, before)
