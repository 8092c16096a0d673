"""Output path validation and atomic writes (usiqa_ros.core.safe_io)."""

from __future__ import annotations

import os

import pytest

from usiqa_ros.core.safe_io import (
    PathError,
    atomic_dir,
    atomic_open,
    atomic_write_text,
    check_input_file,
    check_output_path,
)


def test_output_path_refusals(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "exists.csv").write_text("x")
    (tmp_path / "target.csv").write_text("precious")
    (tmp_path / "link.csv").symlink_to(tmp_path / "target.csv")
    cases = [
        ("", "empty path"),
        ("a\0b.csv", "NUL byte"),
        (tmp_path / "d", "is a directory"),
        (tmp_path / "link.csv", "symbolic link"),
        (tmp_path / "out.txt", "ending in .csv"),
        (tmp_path / "exists.csv", "already exists"),
        (tmp_path / "exists.csv" / "x.csv", "not a directory"),
    ]
    for path, problem in cases:
        with pytest.raises(PathError) as e:
            check_output_path(path, suffixes=(".csv",), overwrite=False)
        assert problem in str(e.value), (path, str(e.value))
    assert (tmp_path / "target.csv").read_text() == "precious"
    ok = check_output_path(tmp_path / "new" / "sub" / "out.csv", suffixes=(".csv",))
    assert ok.parent.is_dir()
    with pytest.raises(PathError, match="not a regular file"):
        check_output_path("/dev/null")


def test_input_file_checks(tmp_path):
    with pytest.raises(PathError, match="does not exist"):
        check_input_file(tmp_path / "nope.bag")
    with pytest.raises(PathError, match="not a regular file"):
        check_input_file(tmp_path)
    f = tmp_path / "a.mcap"
    f.write_bytes(b"x")
    assert check_input_file(f, suffixes=(".mcap",)) == f


def test_atomic_write_keeps_old_content_on_crash(tmp_path):
    path = tmp_path / "results.csv"
    atomic_write_text(path, "complete,1\n")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write("half-writ")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "complete,1\n"
    assert os.listdir(tmp_path) == ["results.csv"]  # no temp file left behind
    with atomic_open(tmp_path / "new.csv") as f:
        f.write("a")
        assert not (tmp_path / "new.csv").exists()  # invisible until complete
    assert (tmp_path / "new.csv").read_text() == "a"


def test_atomic_dir_replaces_only_on_success_and_when_asked(tmp_path):
    bag = tmp_path / "scores_bag"
    with atomic_dir(bag) as tmp:
        tmp.mkdir()
        (tmp / "v1.db3").write_text("1")
        assert not bag.exists()  # invisible until complete
    assert os.listdir(bag) == ["v1.db3"]
    with pytest.raises(PathError, match="exists already"):
        with atomic_dir(bag):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(bag, replace=True) as tmp:
            tmp.mkdir()
            (tmp / "v2.db3").write_text("half")
            raise RuntimeError("crash mid-write")
    assert os.listdir(bag) == ["v1.db3"]  # the old bag survives a failed replacement
    with atomic_dir(bag, replace=True) as tmp:
        tmp.mkdir()
        (tmp / "v2.db3").write_text("2")
    assert os.listdir(bag) == ["v2.db3"] and os.listdir(tmp_path) == ["scores_bag"]
