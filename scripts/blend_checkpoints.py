"""Weighted average of the weights of checkpoints of one architecture (e.g. two points of one training run).

    .venv/bin/python scripts/blend_checkpoints.py OUT.safetensors A.safetensors:0.5 B.safetensors:0.5

Floating-point tensors and buffers are averaged; the first checkpoint gives the configuration. Only runs from one
start average well: runs whose new layers were initialised differently (another `--init-seed`, or unseeded, as the
bundled model) give a model whose scores collapse towards one value even where it still ranks pairs well (README
"Bundled default model"; check with `python -m benchmarks.score_spread`). The training metadata's `init_seed`
(scripts/train_default_model.py) is compared: different starts are refused, unknown ones warned about.
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
    ap.add_argument("--different-starts", action="store_true", help="average runs of different starts anyway")
    args = ap.parse_args()
    paths, weights = zip(*((p.rsplit(":", 1)[0], float(p.rsplit(":", 1)[1])) for p in args.inputs), strict=True)
    total = sum(weights)
    checkpoints = [load_checkpoint(p) for p in paths]
    starts = {p: c.metadata.get("training", {}).get("init_seed") for p, c in zip(paths, checkpoints, strict=True)}
    if None in starts.values():
        unknown = ", ".join(p for p, s in starts.items() if s is None)
        print(f"warning: no init_seed in {unknown}: cannot check that the runs share a start", file=sys.stderr)
    elif len(set(starts.values())) > 1 and not args.different_starts:
        raise SystemExit(f"the runs started from different initialisations {starts}: their average collapses the score")
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
