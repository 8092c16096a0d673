"""The real-frame pools behind the bundled model: what may be trained on (licence), what is held out (group).

- `is_permissive(licence)`: CC BY (any version, without NC/ND/SA), CC0, Apache-2.0 and MIT only. Anything
  else, including a licence the source itself marks as unverified, is evaluation-only.
- `load_rows`: manifest rows of `us_corpus` and `real_us` with their source, group and licence.
- `quality_split`: training rows = permissive rows whose group is not held out; evaluation rows = every
  `real_us` row (any licence) whose group is not in training. Groups of `us_corpus` that also appear in
  `real_us` evaluation rows are held out of training (the README of us_corpus lists 12 lung patients and 40
  fetal-head subjects in both), so no group is ever on both sides.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[5] / "shared" / "data"
US_CORPUS = SHARED_DATA / "us_corpus"
REAL_US = SHARED_DATA / "real_us"

_PERMISSIVE = re.compile(r"^(cc[ -]?by[ -]?\d(\.\d)?|cc0([ -]?1\.0)?|apache[ -]?2\.0|mit)\b", re.IGNORECASE)
_RESTRICTIVE = re.compile(r"\b(nc|nd|sa|non-?commercial|no ?deriv|share ?alike|verify|emergency|none)\b", re.I)


def is_permissive(licence: str) -> bool:
    """True only for CC BY / CC0 / Apache-2.0 / MIT, stated plainly at the start of the licence field."""
    text = (licence or "").strip()
    if not text or _RESTRICTIVE.search(text.replace("CC BY-", "CC BY ")):
        return False
    return bool(_PERMISSIVE.match(text))


@dataclass(frozen=True)
class Row:
    path: Path
    dataset: str  # "us_corpus" or "real_us"
    source: str  # file prefix: pocus, hc18, echoqc, blues, busi, hip...
    group: str
    licence: str
    label: str

    @property
    def permissive(self) -> bool:
        return is_permissive(self.licence)


def _source_of(name: str) -> str:
    head = name.split("_")[0]
    return "pocus" if head.startswith("pocus") else head


def load_rows(root: Path, dataset: str) -> list[Row]:
    """Rows of `<root>/manifest.csv` (columns file, license, group, label)."""
    with open(root / "manifest.csv", newline="") as f:
        return [
            Row(
                root / r["file"],
                dataset,
                _source_of(r["file"]),
                r["group"],
                r.get("license", ""),
                r.get("label", "") or "",
            )
            for r in csv.DictReader(f)
        ]


def training_rows(rows: list[Row]) -> list[Row]:
    """The permissive rows only; raises if a filtered row is not permissive (guards later edits)."""
    out = [r for r in rows if r.permissive]
    bad = [r for r in out if not is_permissive(r.licence)]
    if bad:
        raise ValueError(f"non-permissive row would enter training: {bad[0].path} ({bad[0].licence})")
    return out


def quality_split(
    corpus: list[Row], real: list[Row], exclude_sources: tuple[str, ...] = ("hip",)
) -> tuple[list[Row], list[Row]]:
    """(training rows, evaluation rows). Evaluation = all real_us rows whose group is not trained on.

    Groups that real_us shares with us_corpus are evaluation groups unless real_us has them only under a
    permissive licence AND they have frames in us_corpus (lung patients: their real_us frames then train too).
    `exclude_sources` (the hip frames: the only real quality labels) never train: they are evaluated.
    """
    corpus_groups = {r.group for r in corpus}
    real_groups_train: set[str] = set()
    for r in real:
        if r.source in exclude_sources:
            continue
        if r.source == "pocus" and r.group in corpus_groups and r.permissive:
            real_groups_train.add(r.group)
    # A group with any non-permissive real_us frame is evaluated (its permissive frames are dropped).
    restricted = {r.group for r in real if not r.permissive}
    held = {r.group for r in real if r.group not in real_groups_train} | restricted
    pool = [r for r in corpus + real if r.source not in exclude_sources]
    train = [r for r in training_rows(pool) if r.group not in held]
    train_groups = {r.group for r in train}
    evaluation = [r for r in real if r.group not in train_groups]
    return train, evaluation
