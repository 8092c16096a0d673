"""Weighted average of the weights of checkpoints of one architecture (e.g. two points of one training run).

    .venv/bin/python scripts/blend_checkpoints.py OUT.safetensors A.safetensors:0.5 B.safetensors:0.5

Floating-point tensors and buffers are averaged; the first checkpoint gives the configuration. Tried for the
bundled model (README "Bundled default model": 0.5 x the bundled weights + 0.5 x the weights averaged over steps
300-700 of a run of the same recipe); not adopted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "usiqa_ros"))

from usiqa_ros.core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("inputs", nargs="+", help="PATH:WEIGHT (weights are normalised to sum to 1)")
    args = ap.parse_args()
    paths, weights = zip(*((p.rsplit(":", 1)[0], float(p.rsplit(":", 1)[1])) for p in args.inputs), strict=True)
    total = sum(weights)
    checkpoints = [load_checkpoint(p) for p in paths]
    model = checkpoints[0].model
    states = [c.model.state_dict() for c in checkpoints]
    if any(s.keys() != states[0].keys() for s in states):
        raise SystemExit("the checkpoints do not have the same tensors")
    blended = {
        k: sum(w / total * s[k] for w, s in zip(weights, states, strict=True)) if v.is_floating_point() else v
        for k, v in states[0].items()
    }
    model.load_state_dict(blended)
    sources = ", ".join(f"{w / total:g} x {c.model_id}" for w, c in zip(weights, checkpoints, strict=True))
    save_checkpoint(Path(args.out), model, training={"blend": sources, "command": " ".join(sys.argv)})
    print(f"{args.out}: {sources}")


if __name__ == "__main__":
    main()
