"""The process-group timeout setting (``dist_timeout_s``) and telling a lost peer apart from
other errors. The multi-process behaviour is in tests/integration/test_multinode.py."""

from __future__ import annotations

import pytest

from fcos_core.engine import distributed
from fcos_core.engine.errors import PeerLostError
from fcos_core.engine.pipeline import _dist_timeout
from fcos_core.errors import FcosUserError

GLOO_CLOSED = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] "
    "Connection closed by peer [127.0.0.1]:48801. This is typically caused by a "
    "remote worker crashing."
)
GLOO_TIMEOUT = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:"
    "129] Timed out waiting 8000ms for send operation to complete"
)


def test_dist_timeout_default_and_override(tiny_cfg):
    assert _dist_timeout(tiny_cfg().data) == distributed.DEFAULT_TIMEOUT_S == 1800.0
    assert _dist_timeout(tiny_cfg("dist_timeout_s=42").data) == 42.0


@pytest.mark.parametrize("bad", [0, -5, "soon", True, None])
def test_dist_timeout_rejects_non_positive_values(bad):
    with pytest.raises(FcosUserError) as info:
        _dist_timeout({"dist_timeout_s": bad})
    assert "dist_timeout_s" in str(info.value) and "fix:" in str(info.value)


def test_init_from_env_rejects_a_non_positive_timeout():
    with pytest.raises(ValueError, match="timeout"):
        distributed.init_from_env(0)


def test_peer_failures_are_recognised():
    import torch.distributed as dist

    assert distributed.is_peer_failure(RuntimeError(GLOO_CLOSED))
    assert distributed.is_peer_failure(RuntimeError(GLOO_TIMEOUT))
    assert distributed.is_peer_failure(dist.DistBackendError("NCCL communicator was aborted"))
    assert not distributed.is_peer_failure(RuntimeError("shape mismatch in conv2d"))
    assert not distributed.is_peer_failure(ValueError(GLOO_CLOSED))


def test_peer_lost_error_says_what_happened_and_how_to_continue():
    err = PeerLostError(0, 2, "gloo", 30.0, GLOO_TIMEOUT + "\nsecond line")
    text = str(err)
    assert "rank 0 of 2" in text and "backend gloo" in text and "Timed out waiting" in text
    assert "second line" not in text  # the first line of torch's message only
    assert "--resume" in text and "dist_timeout_s = 30 s" in text
    assert isinstance(err, FcosUserError)  # exit code 2, no traceback
