from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import toy_plugin

from fcos_core.testing import make_host


@pytest.fixture
def toy_host():
    """Built-ins plus the toy plugin; no installed plugin leaks in."""
    return make_host(plugins=[("toy", toy_plugin)])


GOOD = """\
task_name: toy
ckpt_dir: ./tmp/${task_name}
vars:
  num: 3
  model:
    type: ToyModel
    backbone: {type: toynet, depth: "${vars.num}", strides: {8: 16}}
    neck: {type: toyneck}
    transforms: [{type: ToyFlip, p: 0.2}]
    collate: toy_collate
model: ${vars.model}
float_trainer: {type: ToyTrainer, model: "${model}", num_epochs: 2}
"""


@pytest.fixture
def good_yaml():
    return GOOD
