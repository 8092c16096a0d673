"""Does the score grade, not only rank? Severity ladders and combined artefacts on held-out real frames.

    .venv/bin/python -m benchmarks.grading   -> benchmarks/results/grading.json + grading.md

benchmarks.quality asks one question per pair: is the clean frame above its degraded copy? A planner thresholds
the number and reads the grade, so the score must also fall steadily as an artefact gets worse and land near the
value it was trained to mean. On the same held-out real frames as benchmarks.quality (groups never trained on):

1. Severity ladder: per frame and family, the clean frame and copies at severities 0.2, 0.4, 0.6, 0.8 and 1.0 made
   with the same random draws (one artefact pattern, growing stronger). Per family: the mean over frames of the
   Spearman correlation of score and severity along the ladder (-1 = the score falls at every step), the share
   of adjacent rungs in the right order, and the mean score per rung against the training target
   (`core.data.degrade.severity_to_score`: clean 1, severity s -> 0.9 - 0.9 s); the grade the engine publishes
   (`FrameScore.grade`, the most probable grade) against the target's grade (1 + round(4 x target), degrade.py).
   The classical baselines' Spearman on the same ladders beside it.
2. Combined artefacts, a kind no family is: two different families at once (each at severity 0.3-0.8, the second
   applied to the first's output) against each of the two alone. Pairwise accuracy "the frame with both scores
   below the frame with one", overall and per family taking part.
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import pairwise

import numpy as np

from benchmarks.common import RESULTS, write_json
from benchmarks.quality import held_out_rows
from usiqa_ros.core.baselines import available_baselines
from usiqa_ros.core.data.degrade import FAMILIES, degrade, severity_to_score
from usiqa_ros.core.data.synthetic import load_gray
from usiqa_ros.core.engine import Engine, EngineConfig
from usiqa_ros.core.metrics import pairwise_accuracy, srocc
from usiqa_ros.core.safe_io import atomic_write_text

RUNGS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
OUT_JSON = RESULTS / "grading.json"
OUT_MD = RESULTS / "grading.md"


def ladder(img: np.ndarray, family: str, seed: tuple[int, ...]) -> list[np.ndarray]:
    """The clean frame and one artefact pattern (the same draws) at each non-zero rung."""
    return [img] + [degrade(img, family, s, np.random.default_rng(seed)) for s in RUNGS[1:]]


def ladder_stats(scores: np.ndarray) -> dict[str, float]:
    """scores: frames x rungs. Mean Spearman(score, severity) per frame and the share of adjacent rungs ordered
    (a lower score for the higher severity; a tie counts half, as in pairwise accuracy)."""
    rho = [srocc(RUNGS, row) for row in scores]
    rho_ok = [r for r in rho if not np.isnan(r)]
    steps = [pairwise_accuracy(scores[:, a], scores[:, b]) for a, b in pairwise(range(len(RUNGS)))]
    return {
        "spearman_mean": float(np.mean(rho_ok)) if rho_ok else float("nan"),
        "constant_ladders": len(rho) - len(rho_ok),
        "adjacent_ordered": float(np.mean(steps)),
        "adjacent_ordered_per_step": [float(s) for s in steps],
    }


def grade_of(score: float, num_grades: int) -> int:
    """The grade a score stands for (core.data.degrade: grade = 1 + round((G - 1) x score))."""
    return 1 + round((num_grades - 1) * score)


def markdown(res: dict) -> str:
    names = list(res["baselines"])
    lines = (
        []
        if not res["ladder"]
        else [
            f"Severity ladders on {res['n_eval_frames']} held-out real frames (groups never trained on), model "
            f"{res['model_id']}: mean Spearman(score, severity) per frame over clean + severities "
            f"{', '.join(str(s) for s in RUNGS[1:])} (-1 = falls at every step), share of adjacent rungs ordered, mean "
            f"score at each rung (training target {' / '.join(f'{t:.2f}' for t in res['target_per_rung'])}).",
            "",
            "| " + " | ".join(["family", "Spearman", "adjacent ordered", "mean score per rung", *names]) + " |",
            "|---|---|---|---|" + "---|" * len(names),
        ]
    )
    for f, r in res["ladder"].items():
        per_rung = " / ".join(f"{v:.2f}" for v in r["mean_score_per_rung"])
        cells = [f, f"{r['spearman_mean']:.2f}", f"{r['adjacent_ordered']:.3f}", per_rung]
        lines.append("| " + " | ".join(cells + [f"{res['baselines'][b][f]:.2f}" for b in names]) + " |")
    if "ladder_all" in res:
        a = res["ladder_all"]
        lines += [
            "",
            f"All families: Spearman {a['spearman_mean']:.2f}, adjacent rungs ordered {a['adjacent_ordered']:.3f} "
            f"(per step {' / '.join(f'{v:.3f}' for v in a['adjacent_ordered_per_step'])}); mean |score - target| "
            f"{a['mae_to_target']:.3f}; published grade equal to the target's grade {a['grade_agreement']:.3f}, "
            f"within one {a['grade_within_one']:.3f}.",
        ]
    lines += [
        "",
        f"Model {res['model_id']}. Combined artefacts (two families at once, severity 0.3-0.8 each; {res['combined']['n_pairs']} frames): "
        f"scored below the first family alone {res['combined']['below_first']:.3f}, below the second alone "
        f"{res['combined']['below_second']:.3f}, below both {res['combined']['below_both']:.3f}; below both, per "
        "family taking part: "
        + ", ".join(
            f"{f} {v:.2f} (n = {res['combined']['n_per_family'][f]})"
            for f, v in res["combined"]["below_both_per_family"].items()
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="", help="checkpoint (default: the bundled model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-baselines", action="store_true", help="only the model (comparing checkpoints)")
    ap.add_argument("--skip-ladders", action="store_true", help="only the combined artefacts (2 min, not 25)")
    ap.add_argument("--out-json", default=str(OUT_JSON))
    ap.add_argument("--out-md", default=str(OUT_MD))
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    engine = Engine(EngineConfig(model_path=args.model, backend="eager", num_threads=args.threads))
    grades = engine.checkpoint.model.config.num_grades
    evaluation = held_out_rows()
    # The confidence map takes 0.4 s a frame (2 h for the ladders); BRISQUE is optional. The fast ones stay.
    baselines = {k: v for k, v in available_baselines().items() if k not in ("confidence", "brisque")}
    if args.skip_baselines:
        baselines = {}
    fams = list(FAMILIES)
    laddered = [] if args.skip_ladders else fams
    model = np.zeros((len(laddered), len(evaluation), len(RUNGS)))
    published = np.zeros(model.shape, dtype=int)  # FrameScore.grade, what the node publishes
    base = {b: np.zeros_like(model) for b in baselines}
    combo: dict[str, list[float]] = {"both": [], "first": [], "second": []}
    combo_pair: list[tuple[str, str]] = []
    for i, row in enumerate(evaluation):
        img = load_gray(row.path)
        ladders = [ladder(img, f, (args.seed, i, k)) for k, f in enumerate(laddered)]
        for k, rungs in enumerate(ladders):
            for b, fn in baselines.items():
                base[b][k, i] = [fn(x) for x in rungs]
        scored = engine.score([x for rungs in ladders for x in rungs]) if ladders else []
        model[:, i] = np.reshape([s.score for s in scored], (len(laddered), len(RUNGS)))
        published[:, i] = np.reshape([s.grade for s in scored], (len(laddered), len(RUNGS)))
        rng = np.random.default_rng((args.seed, i, len(fams)))
        first, second = rng.choice(len(fams), 2, replace=False)
        s1, s2 = rng.uniform(0.3, 0.8, 2)
        one = degrade(img, fams[first], float(s1), np.random.default_rng((args.seed, i, 100)))
        two = degrade(img, fams[second], float(s2), np.random.default_rng((args.seed, i, 101)))
        both = degrade(one, fams[second], float(s2), np.random.default_rng((args.seed, i, 101)))
        sc = [s.score for s in engine.score([one, two, both])]
        combo["first"].append(sc[0])
        combo["second"].append(sc[1])
        combo["both"].append(sc[2])
        combo_pair.append((fams[first], fams[second]))
        if i % 20 == 0:
            print(f"{i + 1}/{len(evaluation)} frames, {time.monotonic() - t0:.0f} s", flush=True)
    target = np.array([severity_to_score(s) for s in RUNGS])
    res: dict = {
        "command": "python -m benchmarks.grading " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model_id": engine.model_id,
        "n_eval_frames": len(evaluation),
        "rungs": list(RUNGS),
        "target_per_rung": target.tolist(),
        "ladder": {},
        "baselines": {b: {} for b in baselines},
    }
    for k, f in enumerate(laddered):
        res["ladder"][f] = ladder_stats(model[k]) | {"mean_score_per_rung": model[k].mean(0).tolist()}
        for b in baselines:
            res["baselines"][b][f] = ladder_stats(base[b][k])["spearman_mean"]
    if laddered:
        flat = model.reshape(-1, len(RUNGS))
        target_grades = np.array([grade_of(t, grades) for t in target])
        model_grades = published.reshape(-1, len(RUNGS))
        res["ladder_all"] = ladder_stats(flat) | {
            "mae_to_target": float(np.mean(np.abs(flat - target))),
            "grade_agreement": float(np.mean(model_grades == target_grades)),
            "grade_within_one": float(np.mean(np.abs(model_grades - target_grades) <= 1)),
            "mean_score_per_rung": flat.mean(0).tolist(),
        }
    both, first, second = (np.array(combo[k]) for k in ("both", "first", "second"))
    below_both = (both < first) & (both < second)
    per_family = {f: [bool(ok) for p, ok in zip(combo_pair, below_both, strict=True) if f in p] for f in fams}
    res["combined"] = {
        "n_pairs": len(both),
        "below_first": pairwise_accuracy(first, both),
        "below_second": pairwise_accuracy(second, both),
        "below_both": float(below_both.mean()),
        "below_both_per_family": {f: float(np.mean(v)) for f, v in per_family.items() if v},
        "n_per_family": {f: len(v) for f, v in per_family.items()},
    }
    res["seconds"] = round(time.monotonic() - t0)
    write_json(args.out_json, res)
    atomic_write_text(args.out_md, markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
