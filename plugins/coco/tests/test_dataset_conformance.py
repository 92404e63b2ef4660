"""The coco datasets against fcos's dataset conformance suite (fcos_core.testing.conformance):
sample structure of docs/interfaces.md, len, deterministic items, IndexError past the end."""

from __future__ import annotations

import pytest

from fcos_core.testing.conformance import DatasetConformance
from fcos_plugin_coco.dataset import Coco, CocoFolder
from fcos_plugin_coco.packer import pack_coco
from fcos_plugin_coco.transforms.tensor import ToTensor


class TestCocoFolder(DatasetConformance):
    num_classes = 3

    @pytest.fixture
    def dataset(self, clean_coco):
        return CocoFolder(*clean_coco(n=6))


class TestCocoLmdbAfterToTensor(DatasetConformance):
    num_classes = 3

    @pytest.fixture
    def dataset(self, clean_coco, tmp_path):
        img_dir, ann = clean_coco(n=6)
        pack_coco(img_dir, ann, str(tmp_path / "lmdb"), progress=False)
        return Coco(str(tmp_path / "lmdb"), transforms=[ToTensor()])
