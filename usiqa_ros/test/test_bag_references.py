"""Bag tools with reference views: usiqa-eval-bag --references writes artifact_score / view_score columns and
QualityScore fields; score bags of older versions (without those fields) read with a clear note."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from usiqa_ros.core import bagio
from usiqa_ros.core.references import combine
from usiqa_ros.tools import bag_eval
from usiqa_ros.tools.phantom import Phantom, PhantomConfig, ProbePose

# QualityScore as usiqa_msgs defined it before artifact_score / view_score (commit 1cf00e9).
OLD_QUALITY_MSG = """uint8 GRADE_UNKNOWN=0
std_msgs/Header header
float32 score
uint8 grade
float32[] probabilities
string model_id
builtin_interfaces/Duration latency
uint32 frames_skipped
"""

_OLD_WRITER = """
import sys, numpy as np
from pathlib import Path
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore, get_types_from_msg
Q = "usiqa_msgs/msg/QualityScore"
ts = get_typestore(Stores.ROS2_KILTED)
ts.register(get_types_from_msg(sys.argv[2], Q))
T = ts.types
with Writer(Path(sys.argv[1]), version=9) as w:
    c = w.add_connection("/quality", Q, typestore=ts)
    for i in range(3):
        m = T[Q](header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](1, i), frame_id="p"),
                 score=0.25 * i, grade=2, probabilities=np.zeros(5, np.float32), model_id="old@1",
                 latency=T["builtin_interfaces/msg/Duration"](0, 1), frames_skipped=0)
        w.write(c, 10 + i, ts.serialize_cdr(m, Q))
"""


def test_old_score_bag_reads_with_a_note(tmp_path):
    bag = tmp_path / "old_scores"
    # a separate process: rosbags caches message classes by name, the old definition must not meet the new one
    subprocess.run([sys.executable, "-c", _OLD_WRITER, str(bag), OLD_QUALITY_MSG], check=True)
    records, note = bagio.read_scores(bag)
    assert [r.score for r in records] == [0.0, 0.25, 0.5]
    assert [r.artifact_score for r in records] == [0.0, 0.25, 0.5]
    assert all(math.isnan(r.view_score) for r in records)
    assert "3 scores" in note and "predate artifact_score/view_score" in note and str(bag) in note


def test_read_scores_errors_are_one_message(tmp_path):
    with pytest.raises(bagio.BagError, match="does not exist"):
        bagio.read_scores(tmp_path / "nope")


def _image_bag(path: Path, frames: list[np.ndarray]) -> None:
    with bagio.atomic_bag(path) as w:
        conn = bagio.add_image_connection(w, "/us/image", bagio.IMAGE_TYPE)
        for i, f in enumerate(frames):
            w.write(conn, 1_000 + i, bagio.serialize(bagio.image_message(f, 1_000_000 + i, "probe")))


def test_eval_bag_with_references_writes_view_columns_and_fields(tmp_path, capsys):
    ph = Phantom(PhantomConfig(seed=5))
    poses = [ProbePose(x=0), ProbePose(x=30, tilt=20), ProbePose(x=2, y=2), ProbePose(lift=6.0), ProbePose(x=-35)]
    _image_bag(tmp_path / "sweep", [ph.render(p).image for p in poses])
    refs = tmp_path / "refs"
    refs.mkdir()
    teach = Phantom(PhantomConfig(seed=99))  # other speckle: the references are not frames of the sweep
    for i, p in enumerate([ProbePose(x=1), ProbePose(x=-1, y=1)]):
        cv2.imwrite(str(refs / f"ref{i}.png"), teach.render(p).image)
    out = tmp_path / "eval"
    rc = bag_eval.main([str(tmp_path / "sweep"), "--out", str(out), "--references", str(refs), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    with open(out / "frames.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    for r in rows:
        a, v, s = float(r["artifact_score"]), float(r["view_score"]), float(r["score"])
        assert 0 <= v <= 1 and s == pytest.approx(combine(a, v), abs=2e-5)
    assert json.loads((out / "summary.json").read_text())["reference_views"] == 2
    records, note = bagio.read_scores(out / "scores_bag")
    assert note == "" and len(records) == 5
    assert [r.view_score for r in records] == pytest.approx([float(r["view_score"]) for r in rows], abs=1e-4)
    # without references: view_score empty in the CSV, NaN in the bag, score = artifact_score
    out2 = tmp_path / "eval2"
    assert bag_eval.main([str(tmp_path / "sweep"), "--out", str(out2), "--no-progress"]) == 0
    with open(out2 / "frames.csv") as f:
        rows2 = list(csv.DictReader(f))
    assert all(r["view_score"] == "" and r["score"] == r["artifact_score"] for r in rows2)
    records2, _ = bagio.read_scores(out2 / "scores_bag")
    assert all(math.isnan(r.view_score) and r.score == r.artifact_score for r in records2)


def test_eval_bag_refuses_bad_references_with_one_message(tmp_path, capsys):
    _image_bag(tmp_path / "sweep", [Phantom().render(ProbePose()).image])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "references.safetensors").write_bytes(b"junk")
    rc = bag_eval.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "o"), "--references", str(bad)])
    err = capsys.readouterr().err
    assert rc == 1 and "references.safetensors is corrupt" in err and "Traceback" not in err
