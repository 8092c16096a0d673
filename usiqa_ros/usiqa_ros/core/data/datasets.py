"""Graded image datasets from disk: CSV `file,grade`, folder-per-grade, or the real_us manifest (with `group`).

Every item keeps where it came from (CSV row or folder), so a missing file, an unreadable image or a grade out
of range is reported as `<csv> row <n>: <file>: <problem>` instead of a bare traceback mid-epoch. Pixels go
through `usiqa_ros.core.preprocess.preprocess_frame`, so training sees exactly what the node scores.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from usiqa_ros.core.data.synthetic import weak_view
from usiqa_ros.core.preprocess import FrameError, PreprocessConfig, preprocess_frame, to_gray_float

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
NUM_GRADES = 5


class DatasetError(ValueError):
    """Malformed dataset input; the message names the file (and CSV row when there is one)."""


@dataclass(frozen=True)
class GradedItem:
    path: Path
    grade: int | None  # 1..NUM_GRADES, None for ungraded (CRL-UIQA, synthetic sources)
    group: str  # patient/subject: never in two splits
    origin: str  # "labels.csv row 7" or "folder 3" - for error messages

    @property
    def key(self) -> str:
        return self.path.name


def _parse_grade(raw: str, origin: str, num_grades: int) -> int:
    try:
        value = float(raw)
    except ValueError:
        raise DatasetError(f"{origin}: grade {raw!r} is not a number") from None
    if value != int(value) or not 1 <= value <= num_grades:
        raise DatasetError(f"{origin}: grade {raw!r} out of range (an integer 1..{num_grades})")
    return int(value)


def read_image(item: GradedItem) -> np.ndarray:
    """H x W float32 gray in [0, 1]; DatasetError naming the item when missing or unreadable."""
    if not item.path.is_file():
        raise DatasetError(f"{item.origin}: {item.path}: file not found")
    img = cv2.imread(str(item.path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"{item.origin}: {item.path}: cannot be read as an image (corrupt or not an image)")
    try:
        return to_gray_float(img)
    except FrameError as e:
        raise DatasetError(f"{item.origin}: {item.path}: {e}") from None


def _read_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: CSV file not found")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = [c.strip() for c in reader.fieldnames or []]
    return fields, rows


def _check(items: list[GradedItem], verify: bool) -> list[GradedItem]:
    if not items:
        raise DatasetError("dataset has no items")
    for it in items:
        if verify:
            read_image(it)
        elif not it.path.is_file():
            raise DatasetError(f"{it.origin}: {it.path}: file not found")
    return items


def load_csv(
    csv_path: str | Path, root: str | Path | None = None, num_grades: int = NUM_GRADES, verify: bool = True
) -> list[GradedItem]:
    """CSV with columns `file,grade` (optional `group`); files relative to `root` (default: the CSV's folder).

    Also reads the real_us manifest (`file,...,group`, no grade): items are then ungraded (grade None).
    """
    csv_path = Path(csv_path)
    root = Path(root) if root is not None else csv_path.parent
    fields, rows = _read_rows(csv_path)
    if "file" not in fields:
        raise DatasetError(f"{csv_path}: needs a 'file' column (has {fields})")
    graded = "grade" in fields
    items = []
    for n, row in enumerate(rows, start=2):  # row 1 is the header
        origin = f"{csv_path.name} row {n}"
        name = (row.get("file") or "").strip()
        if not name:
            raise DatasetError(f"{origin}: empty 'file'")
        grade = _parse_grade((row.get("grade") or "").strip(), f"{origin}: {name}", num_grades) if graded else None
        group = (row.get("group") or "").strip() or name
        items.append(GradedItem(root / name, grade, group, origin))
    return _check(items, verify)


def load_manifest(manifest: str | Path, verify: bool = True) -> list[GradedItem]:
    """The real_us manifest format (`file, ..., group`); grades only if it has a `grade` column."""
    items = load_csv(manifest, verify=verify)
    fields, _ = _read_rows(Path(manifest))
    if "group" not in fields:
        raise DatasetError(f"{manifest}: a manifest needs a 'group' column (has {fields})")
    return items


def load_folders(root: str | Path, num_grades: int = NUM_GRADES, verify: bool = True) -> list[GradedItem]:
    """`root/<grade>/<image>` with grade folders named 1..num_grades; other folders are an error."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: folder not found")
    items = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        grade = _parse_grade(sub.name, f"folder {sub}", num_grades)
        for f in sorted(sub.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                items.append(GradedItem(f, grade, f"{sub.name}/{f.name}", f"folder {sub.name}"))
    return _check(items, verify)


def load_any(path: str | Path, verify: bool = True) -> list[GradedItem]:
    """Folder -> folder-per-grade; CSV -> `file,grade` CSV or manifest (ungraded when no `grade` column)."""
    path = Path(path)
    if path.is_dir():
        if (path / "manifest.csv").is_file():
            return load_manifest(path / "manifest.csv", verify)
        if (path / "labels.csv").is_file():
            return load_csv(path / "labels.csv", verify=verify)
        return load_folders(path, verify=verify)
    return load_csv(path, verify=verify)


def require_grades(items: Sequence[GradedItem]) -> None:
    ungraded = [it for it in items if it.grade is None]
    if ungraded:
        raise DatasetError(f"{ungraded[0].origin}: {ungraded[0].path.name}: no grade (supervised training needs one)")


class GradedImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """(1 x S x S float32 tensor, grade index 0..G-1 or -1 when ungraded). `augment` applies `weak_view`."""

    def __init__(self, items: Sequence[GradedItem], preprocess: PreprocessConfig, augment: bool = False, seed: int = 0):
        self.items = list(items)
        self.preprocess = preprocess
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def grades(self) -> list[int]:
        return [it.grade if it.grade is not None else 0 for it in self.items]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.items[index]
        img = read_image(item)
        if self.augment:
            img = weak_view(img, np.random.default_rng((self.seed, self.epoch, index)))
        try:
            x = preprocess_frame(img, self.preprocess)
        except FrameError as e:
            raise DatasetError(f"{item.origin}: {item.path}: {e}") from None
        return torch.from_numpy(x), (item.grade - 1 if item.grade is not None else -1)
