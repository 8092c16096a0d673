"""scripts/train_default_model.py: a run starts from the same weights for the same training seed."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from train_default_model import start_model  # noqa: E402


def test_start_weights_follow_the_training_seed() -> None:
    states = [start_model("usqnet_lite", "", view_blocks=5, size=64, seed=s)[0].state_dict() for s in (0, 0, 1)]
    new = [k for k in states[0] if k.startswith(("head.", "global_pool."))]
    assert new, "the lite preset has a head and a pooling reduction to initialise"
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in new)
    backbone = [k for k in states[0] if k.startswith("backbone.")]
    assert all(torch.equal(states[0][k], states[2][k]) for k in backbone), "ImageNet weights do not depend on it"
