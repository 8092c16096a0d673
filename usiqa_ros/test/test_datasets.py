"""Dataset formats and their promised errors (file and CSV row named)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from usiqa_ros.core.data.datasets import (
    DatasetError,
    GradedImageDataset,
    load_any,
    load_csv,
    load_folders,
    load_manifest,
)
from usiqa_ros.core.data.splits import grouped_split, kfold_splits, load_split, save_split
from usiqa_ros.core.preprocess import PreprocessConfig


def _png(path: Path, value: int = 120) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((40, 48), value, np.uint8)
    img[10:30, 10:30] = 250
    cv2.imwrite(str(path), img)


def test_csv_folders_manifest_load(tmp_path: Path, real_us: Path) -> None:
    for i in range(3):
        _png(tmp_path / "imgs" / f"a{i}.png")
    (tmp_path / "labels.csv").write_text("file,grade\nimgs/a0.png,1\nimgs/a1.png,5\nimgs/a2.png,3\n")
    items = load_csv(tmp_path / "labels.csv")
    assert [it.grade for it in items] == [1, 5, 3]
    ds = GradedImageDataset(items, PreprocessConfig(input_size=32), augment=True)
    x, y = ds[1]
    assert tuple(x.shape) == (1, 32, 32) and y == 4 and 0 <= float(x.min()) <= float(x.max()) <= 1
    for g in (2, 4):
        _png(tmp_path / "byfolder" / str(g) / f"f{g}.png")
    assert [it.grade for it in load_any(tmp_path / "byfolder")] == [2, 4]
    man = load_manifest(real_us / "manifest.csv", verify=False)
    assert len(man) > 100 and all(it.grade is None for it in man)
    assert len({it.group for it in man}) < len(man)  # groups hold several frames


def test_errors_name_file_and_row(tmp_path: Path) -> None:
    _png(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    cases = {
        "file,grade\nok.png,3\nmissing.png,2\n": r"labels\.csv row 3: .*missing\.png: file not found",
        "file,grade\nok.png,3\nbad.png,2\n": r"labels\.csv row 3: .*bad\.png: cannot be read as an image",
        "file,grade\nok.png,6\n": r"labels\.csv row 2: ok\.png: grade '6' out of range",
        "file,grade\nok.png,0\n": r"row 2: ok\.png: grade '0' out of range",
        "file,grade\nok.png,2.5\n": r"grade '2\.5' out of range",
        "file,grade\nok.png,good\n": r"row 2: ok\.png: grade 'good' is not a number",
        "name,grade\nok.png,1\n": r"needs a 'file' column",
    }
    for text, pattern in cases.items():
        (tmp_path / "labels.csv").write_text(text)
        with pytest.raises(DatasetError, match=pattern):
            load_csv(tmp_path / "labels.csv")
    _png(tmp_path / "folders" / "7" / "x.png")
    with pytest.raises(DatasetError, match=r"folders/7.*grade '7' out of range"):
        load_folders(tmp_path / "folders")
    with pytest.raises(DatasetError, match="CSV file not found"):
        load_csv(tmp_path / "nope.csv")
    # Without verification, an image broken after loading fails in __getitem__ with the same naming.
    (tmp_path / "labels.csv").write_text("file,grade\nok.png,3\nbad.png,2\n")
    ds = GradedImageDataset(load_csv(tmp_path / "labels.csv", verify=False), PreprocessConfig(input_size=32))
    with pytest.raises(DatasetError, match=r"row 3: .*bad\.png"):
        ds[1]


def test_splits_grouped_kfold_saved(tmp_path: Path) -> None:
    keys = [f"k{i}" for i in range(40)]
    groups = [f"g{i // 4}" for i in range(40)]
    split = grouped_split(keys, groups, (0.6, 0.2, 0.2), seed=3)
    group_of = dict(zip(keys, groups, strict=True))
    sets = {name: {group_of[k] for k in v} for name, v in split.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sorted(sum(split.values(), [])) == sorted(keys)
    assert grouped_split(keys, groups, (0.6, 0.2, 0.2), seed=3) == split
    assert load_split(save_split(tmp_path / "s.json", split, seed=3)) == split
    folds = kfold_splits(keys, groups, k=5)
    assert sorted(sum((f["val"] for f in folds), [])) == sorted(keys)


def test_synthetic_set_written_and_loadable(tmp_path: Path) -> None:
    from usiqa_ros.core.data.synthetic import (
        SyntheticConfig,
        SyntheticGradedDataset,
        load_gray,
        write_synthetic_dataset,
    )

    sample = Path(__file__).resolve().parents[1] / "usiqa_ros" / "sample_frames"
    sources = [(sample / "frame_0000.png", "a"), (sample / "frame_0010.png", "b")]
    csv_path = write_synthetic_dataset(sources, tmp_path / "syn", per_frame=5, seed=1)
    items = load_csv(csv_path)
    assert [it.grade for it in items] == [5, 4, 3, 2, 1] * 2
    assert [it.group for it in items] == ["a"] * 5 + ["b"] * 5
    clean = load_gray(items[0].path)
    worst = load_gray(items[4].path)
    assert np.abs(clean - worst).mean() > 0.01
    ds = SyntheticGradedDataset(
        [clean], PreprocessConfig(input_size=32), SyntheticConfig(samples_per_epoch=10, work_size=64)
    )
    assert sorted(ds[i][1] for i in range(10)) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(ValueError):
        write_synthetic_dataset([], tmp_path / "none")
