"""Reproducible train/val/test splits: grouped (no group in two splits, optionally stratified) and k-fold.

A split is a dict `{"train": [...], "val": [...], "test": [...]}` of item keys (file names), saved as JSON
with the seed and method so a run can be repeated exactly (`save_split` / `load_split`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usiqa_ros.core.safe_io import atomic_write_text

SPLIT_NAMES = ("train", "val", "test")


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {list(fractions)}")


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Counts per split for n units, largest remainders; val/test get at least one unit when n allows."""
    raw = [f * n for f in fractions]
    counts = [int(r) for r in raw]
    for i in sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    for i in (1, 2):
        if fractions[i] > 0 and counts[i] == 0 and counts[0] > 1:
            counts[i] += 1
            counts[0] -= 1
    return counts


def grouped_split(
    keys: Sequence[str],
    groups: Sequence[str],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    strata: Sequence[Any] | None = None,
) -> dict[str, list[str]]:
    """Whole groups go to one split. With `strata` (e.g. source or grade) groups are divided per stratum.

    A group's stratum is the most common stratum of its items.
    """
    _check_fractions(fractions)
    if len(keys) != len(groups) or (strata is not None and len(strata) != len(keys)):
        raise ValueError("keys, groups and strata must have the same length")
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be unique")
    members: dict[str, list[str]] = defaultdict(list)
    group_strata: dict[str, list[Any]] = defaultdict(list)
    for i, (k, g) in enumerate(zip(keys, groups, strict=True)):
        members[str(g)].append(k)
        group_strata[str(g)].append(strata[i] if strata is not None else 0)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for g, ss in group_strata.items():
        values, freq = np.unique(np.array([str(s) for s in ss]), return_counts=True)
        by_stratum[str(values[np.argmax(freq)])].append(g)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for stratum in sorted(by_stratum):
        gs = sorted(by_stratum[stratum])
        rng.shuffle(gs)
        counts = _allocate(len(gs), fractions)
        start = 0
        for name, c in zip(SPLIT_NAMES, counts, strict=True):
            for g in gs[start : start + c]:
                out[name].extend(members[g])
            start += c
    return {name: sorted(v) for name, v in out.items()}


def kfold_splits(
    keys: Sequence[str], groups: Sequence[str] | None = None, k: int = 5, seed: int = 0
) -> list[dict[str, list[str]]]:
    """k folds over groups (each item's own group when None): fold i is `val`, the rest `train`."""
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    groups = list(groups) if groups is not None else list(keys)
    uniq = sorted(set(map(str, groups)))
    if len(uniq) < k:
        raise ValueError(f"{len(uniq)} groups cannot make {k} folds")
    rng = np.random.default_rng(seed)
    rng.shuffle(uniq)
    fold_of = {g: i % k for i, g in enumerate(uniq)}
    folds = []
    for i in range(k):
        val = sorted(key for key, g in zip(keys, groups, strict=True) if fold_of[str(g)] == i)
        train = sorted(key for key, g in zip(keys, groups, strict=True) if fold_of[str(g)] != i)
        folds.append({"train": train, "val": val, "test": []})
    return folds


def save_split(path: str | Path, split: dict[str, list[str]], **info: Any) -> Path:
    """Write the split with its provenance (seed, method, fractions, source...) as JSON."""
    payload = {"info": info, "counts": {k: len(v) for k, v in split.items()}, "split": split}
    return atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


def load_split(path: str | Path) -> dict[str, list[str]]:
    data = json.loads(Path(path).read_text())
    split = data.get("split") if isinstance(data, dict) else None
    if not isinstance(split, dict) or not all(isinstance(v, list) for v in split.values()):
        raise ValueError(f"{path}: not a split file (expected {{'split': {{'train': [...], ...}}}})")
    return {k: [str(x) for x in v] for k, v in split.items()}
