"""scripts/train_default_model.py (repository level, not part of the installed package): a run starts from the
same weights for the same training seed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_default_model.py"


def test_start_weights_follow_the_training_seed() -> None:
    if not SCRIPT.is_file():
        pytest.skip(f"{SCRIPT} is not here (the package outside its repository)")
    spec = importlib.util.spec_from_file_location("train_default_model", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    states = [script.start_model("usqnet_lite", "", view_blocks=5, size=64, seed=s)[0].state_dict() for s in (0, 0, 1)]
    new = [k for k in states[0] if k.startswith(("head.", "global_pool."))]
    assert new, "the lite preset has a head and a pooling reduction to initialise"
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in new)
    backbone = [k for k in states[0] if k.startswith("backbone.")]
    assert all(torch.equal(states[0][k], states[2][k]) for k in backbone), "ImageNet weights do not depend on it"
