"""Bag tools on real bags: bags written with rosbags from real clip frames (in tmp dirs), scored offline with the
real model, replayed into a real running iqa_node; error paths leave nothing half-written."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import PKG

from usiqa_ros.core import bagio
from usiqa_ros.core.engine import Engine, EngineConfig
from usiqa_ros.tools import bag_eval, bag_report, make_bag
from usiqa_ros.tools.bag_types import BagScores

SAMPLE_CLIP = PKG / "usiqa_ros" / "sample_frames"  # the bundled clip: 48 frames, 370 x 370 gray (no dev data needed)
START_NS = 1_700_000_000_123_456_789
N = 24


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return list(make_bag.frames_from_folder(SAMPLE_CLIP))[:N]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineConfig(device="cpu"))


@pytest.fixture(scope="module")
def raw_bag(tmp_path_factory, frames) -> make_bag.MadeBag:
    out = tmp_path_factory.mktemp("bags") / "raw_sqlite"
    return make_bag.write_image_bag(out, frames, 25.0, start_ns=START_NS)


@pytest.fixture(scope="module")
def raw_scores(raw_bag, engine) -> BagScores:
    return bag_eval.score_bag(raw_bag.path, engine, batch=8, progress=False)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _no_outputs(out: Path) -> bool:
    """Nothing that looks like a result: no reports, no bag, no temporary leftovers."""
    return not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------------------------------------ make_bag
def test_made_bag_metadata_is_what_ros2_bag_play_reads(raw_bag, frames):
    meta = yaml.safe_load((raw_bag.path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9 and meta["storage_identifier"] == "sqlite3"
    assert meta["message_count"] == N
    (topic,) = meta["topics_with_message_count"]
    tm = topic["topic_metadata"]
    assert tm["name"] == "/us/image" and tm["type"] == "sensor_msgs/msg/Image" and tm["serialization_format"] == "cdr"
    (q,) = tm["offered_qos_profiles"]
    assert q["reliability"] == "reliable" and q["durability"] == "volatile" and q["history"] == "keep_last"
    assert q["deadline"] == {"sec": 9223372036, "nsec": 854775807}
    # the type hash is the one rosidl generated for this distro's sensor_msgs
    installed = Path(sys.prefix) / "share" / "sensor_msgs" / "msg" / "Image.json"
    if installed.exists():
        assert tm["type_description_hash"] in installed.read_text()
    # header stamps at the frame rate, bag time just after the stamp, frames unchanged
    assert raw_bag.stamps_ns == [START_NS + round(i * 1e9 / 25.0) for i in range(N)]
    with bagio.open_bag(raw_bag.path) as r:
        ims = list(bagio.iter_images(r, "/us/image"))
    assert [im.stamp_ns for im in ims] == raw_bag.stamps_ns
    assert all(0 < im.log_ns - im.stamp_ns < 10_000_000 for im in ims)
    assert {im.frame_id for im in ims} == {"us_probe_link"}
    np.testing.assert_array_equal(bagio.decode_image(ims[5].msg, ims[5].msgtype), frames[5])


def test_make_bag_cli_from_video(tmp_path):
    video = tmp_path / "scan.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (96, 64))
    for i in range(12):
        w.write(np.full((64, 96, 3), 20 * i, np.uint8))
    w.release()
    assert make_bag.main([str(tmp_path / "v"), "--video", str(video), "--storage", "mcap", "--start", "100.5"]) == 0
    with bagio.open_bag(tmp_path / "v") as r:
        ims = list(bagio.iter_images(r, "/us/image"))
    assert len(ims) == 12
    assert [im.stamp_ns for im in ims] == [100_500_000_000 + i * 50_000_000 for i in range(12)]  # 20 fps from the file
    assert bagio.decode_image(ims[0].msg, ims[0].msgtype).shape == (64, 96, 3)
    # refuses to overwrite, and a missing source is a clear error
    assert make_bag.main([str(tmp_path / "v"), "--video", str(video)]) == 1
    assert make_bag.main([str(tmp_path / "w"), "--frames", str(tmp_path / "nope")]) == 1
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------------------------------------ offline
def test_round_trip_cli_one_row_per_frame_with_stamps(raw_bag, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = bag_eval.main([str(raw_bag.path), "--topic", "/us/image", "--out", str(out), "--batch", "8", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    rows = _read_csv(out / "frames.csv")
    assert [int(r["index"]) for r in rows] == list(range(N))
    assert [int(r["stamp_ns"]) for r in rows] == raw_bag.stamps_ns
    assert rows[3]["stamp"] == f"{raw_bag.stamps_ns[3] // 10**9}.{raw_bag.stamps_ns[3] % 10**9:09d}"
    for r in rows:
        p = [float(r[f"p{g}"]) for g in range(1, 6)]
        assert abs(sum(p) - 1) < 1e-3 and int(r["grade"]) == int(np.argmax(p)) + 1 and 0 <= float(r["score"]) <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == summary["scored"] == N
    assert sum(summary["grade_distribution"].values()) == N
    assert summary["recorded_fps"] == pytest.approx(25.0, rel=1e-3)
    assert summary["throughput"]["frames_per_s"] > 0
    best, worst = summary["best"], summary["worst"]
    assert len(best) == len(worst) == 4 and best[0]["score"] >= best[-1]["score"] >= worst[-1]["score"]
    assert best[0]["score"] == pytest.approx(max(float(r["score"]) for r in rows), abs=1e-4)
    png = cv2.imread(str(out / "timeline.png"))
    assert png is not None and png.shape[0] > 300 and png.shape[1] > 800
    md = (out / "summary.md").read_text()
    assert "Best moments" in md and "Worst moments" in md and str(best[0]["index"]) in md
    assert not list(out.glob(".*partial*"))


def test_offline_scores_match_the_engine_on_the_original_frames(raw_scores, engine, frames):
    direct = engine.score(frames)
    got = [f.score for f in raw_scores.frames]
    np.testing.assert_allclose(got, [d.score for d in direct], atol=1e-4)
    assert [f.grade for f in raw_scores.frames] == [d.grade for d in direct]


@pytest.mark.parametrize(
    ("storage", "fmt"), [("mcap", "raw"), ("sqlite3", "png"), ("mcap", "png"), ("sqlite3", "jpeg")]
)
def test_storages_and_compressed_images(storage, fmt, frames, engine, raw_scores, tmp_path):
    made = make_bag.write_image_bag(tmp_path / "b", frames, 25.0, storage=storage, fmt=fmt, start_ns=START_NS)
    s = bag_eval.score_bag(made.path, engine, batch=8, progress=False)
    expected_type = bagio.IMAGE_TYPE if fmt == "raw" else bagio.COMPRESSED_TYPE
    assert s.msgtype == expected_type and len(s.frames) == len(s.scored) == N
    assert [f.stamp_ns for f in s.frames] == made.stamps_ns
    ref = np.array([f.score for f in raw_scores.frames])
    got = np.array([f.score for f in s.frames])
    if fmt == "jpeg":  # lossy (q90): close, not equal; the model rates block artefacts (a training family)
        delta = np.abs(got - ref)
        assert np.median(delta) < 0.02 and delta.max() < 0.1, delta.round(3).tolist()
    else:  # lossless: the same pixels, the same scores
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_ros1_bag_is_read_too(frames, engine, raw_scores, tmp_path):
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS1_NOETIC)
    Image, Header, Time = (
        ts.types[t] for t in ("sensor_msgs/msg/Image", "std_msgs/msg/Header", "builtin_interfaces/msg/Time")
    )
    with Writer(tmp_path / "r1.bag") as w:
        c = w.add_connection("/us/image", Image.__msgtype__, typestore=ts)
        for i, f in enumerate(frames[:4]):
            h = Header(seq=i, stamp=Time(1000 + i, 5), frame_id="probe")
            m = Image(
                header=h,
                height=f.shape[0],
                width=f.shape[1],
                encoding="mono8",
                is_bigendian=0,
                step=f.shape[1],
                data=f.reshape(-1),
            )
            w.write(c, (1000 + i) * 10**9 + 5, ts.serialize_ros1(m, Image.__msgtype__))
    s = bag_eval.score_bag(tmp_path / "r1.bag", engine, progress=False)
    assert [f.stamp_ns for f in s.frames] == [(1000 + i) * 10**9 + 5 for i in range(4)]
    np.testing.assert_allclose([f.score for f in s.frames], [f.score for f in raw_scores.frames[:4]], atol=1e-4)


def test_degraded_frames_score_lower_than_their_neighbours(frames, engine, tmp_path):
    """Injected heavy degradations (the kinds of core.data.degrade) score below both neighbouring clean frames
    on most degraded frames (the bundled trained model)."""
    kinds = {3: "blur", 7: "depth_attenuation", 11: "contact_loss", 15: "blur", 19: "gain", 22: "depth_attenuation"}
    made = make_bag.write_image_bag(tmp_path / "d", frames, 25.0, degrade=kinds, severity=0.9, seed=1)
    assert made.degraded == sorted(kinds)
    meta = yaml.safe_load((made.path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert json.loads(meta["custom_data"]["usiqa.degraded"]) == {str(k): v for k, v in kinds.items()}
    s = bag_eval.score_bag(made.path, engine, batch=8, progress=False)
    sc = [f.score for f in s.frames]
    lower = [i for i in kinds if sc[i] < min(sc[i - 1], sc[i + 1])]
    assert len(lower) >= 4, f"degraded frames below both neighbours: {lower} of {sorted(kinds)}; scores {sc}"


def test_labels_joined_by_stamp_and_metrics(raw_scores, tmp_path):
    rng = np.random.default_rng(0)
    stamps = [f.stamp_ns for f in raw_scores.frames]
    grades = [1 + i % 5 for i in range(N)]
    lines = ["stamp,grade"]
    for ns, g in zip(stamps, grades, strict=True):
        jit = int(rng.integers(-2_000_000, 2_000_000))  # +-2 ms, inside the 5 ms tolerance
        lines.append(f"{(ns + jit) // 10**9}.{(ns + jit) % 10**9:09d},{g}")
    lines.append(f"{(stamps[-1] + 20_000_000) / 1e9:.9f},3")  # 20 ms after the last frame: no match
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    labels = bag_report.load_labels(tmp_path / "labels.csv")
    assert labels.key == "stamp" and not labels.binary
    sm = bag_report.write_reports(raw_scores, tmp_path / "out", labels=labels)
    info = sm["labels"]
    assert info["matched"] == N and info["unmatched"] == 1
    rows = _read_csv(tmp_path / "out" / "frames.csv")
    assert [int(r["label"]) for r in rows] == grades
    pred = np.array([int(r["grade"]) for r in rows])
    m = info["metrics"]
    assert m["n"] == N
    assert m["accuracy"] == pytest.approx(float((pred == np.array(grades)).mean()), abs=1e-4)
    assert 0 <= m["macro_f1"] <= 1 and 0 <= m["pairwise_accuracy"] <= 1
    assert m["srocc"] is None or -1 <= m["srocc"] <= 1
    assert "SROCC" in (tmp_path / "out" / "summary.md").read_text()


def test_phantom_bag_with_ground_truth_labels_cli(tmp_path, capsys):
    """Simulated probe -> bag + ground-truth labels CSV (by stamp) -> usiqa-eval-bag joins every label."""
    bag, gt = tmp_path / "ph", tmp_path / "gt.csv"
    argv = [str(bag), "--phantom", "12", "--fps", "10", "--phantom-labels", str(gt), "--format", "jpeg"]
    assert make_bag.main(argv) == 0
    rows = _read_csv(gt)
    assert len(rows) == 12 and all(1 <= int(r["grade"]) <= 5 for r in rows)
    assert len({r["grade"] for r in rows}) > 1  # the sweep passes through good and bad views
    out = tmp_path / "out"
    assert bag_eval.main([str(bag), "--labels", str(gt), "--out", str(out), "--no-progress", "--no-bag"]) == 0
    assert "labels: accuracy" in capsys.readouterr().out
    sm = json.loads((out / "summary.json").read_text())
    assert sm["labels"]["matched"] == 12 and sm["labels"]["unmatched"] == 0 and sm["labels"]["metrics"]["n"] == 12
    assert sm["outputs"]["scores_bag"] is None and not (out / "scores_bag").exists()


def test_good_bad_labels_by_index(raw_scores, tmp_path):
    (tmp_path / "l.csv").write_text("index,label\n0,good\n1,bad\n2,GOOD\n99,bad\n")
    labels = bag_report.load_labels(tmp_path / "l.csv")
    assert labels.binary and labels.values == [1, 0, 1, 0]
    joined, missed = bag_report.join_labels(raw_scores.frames, labels, 0.005)
    assert joined == {0: 1, 1: 0, 2: 1} and missed == 1
    (tmp_path / "bad.csv").write_text("index,grade\n0,7\n")
    with pytest.raises(bag_report.LabelError, match="line 2"):
        bag_report.load_labels(tmp_path / "bad.csv")


def test_agreement_metrics_definitions():
    s = np.array([0.1, 0.5, 0.9, 0.9])
    y = np.array([1, 2, 3, 2])
    m = bag_report.agreement_metrics(s, np.array([1, 2, 3, 3]), y, binary=False, good_grade=3)
    assert m["accuracy"] == pytest.approx(0.75)
    # pairs with different labels: (0,1), (0,2), (0,3), (1,2) ordered right; (2,3) score tie -> 0.5;
    # (1,3) share a label and do not count
    assert m["pairwise_accuracy"] == pytest.approx(4.5 / 5)
    # good/bad: predicted good = grade >= good_grade
    m = bag_report.agreement_metrics(s, np.array([1, 2, 3, 4]), np.array([0, 0, 1, 0]), binary=True, good_grade=3)
    assert m["accuracy"] == pytest.approx(0.75) and m["n"] == 4


def test_scores_bag_has_embedded_definition_and_reads_back(raw_bag, raw_scores, tmp_path):
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    from usiqa_msgs.msg import QualityScore

    path = tmp_path / "scores"
    n = bag_report.write_scores_bag(raw_scores, path, "mcap", "/quality", merge_images=True)
    assert n == 2 * N
    ts = get_typestore(Stores.ROS2_KILTED)  # a reader that knows nothing about usiqa_msgs
    with Reader(path) as r:
        conns = {c.topic: c for c in r.connections}
        q = conns["/quality"]
        assert q.msgtype == "usiqa_msgs/msg/QualityScore" and "frames_skipped" in q.msgdef.data
        installed = Path(sys.prefix) / "share" / "usiqa_msgs" / "msg" / "QualityScore.json"
        if installed.exists():
            assert q.digest in installed.read_text()  # rosbags' RIHS01 == rosidl's
        ts.register(get_types_from_msg(q.msgdef.data.split("=" * 80)[0], q.msgtype))
        got = [(ts.deserialize_cdr(raw, q.msgtype), raw) for _, _, raw in r.messages(connections=[q])]
        assert conns["/us/image"].msgcount == N
    assert [bagio.stamp_ns(m.header.stamp) for m, _ in got] == raw_bag.stamps_ns
    for (m, raw), f in zip(got, raw_scores.frames, strict=True):
        assert m.score == pytest.approx(f.score, abs=1e-6) and m.grade == f.grade
        assert m.model_id == raw_scores.model_id and len(m.probabilities) == 5
        rm = deserialize_message(raw, QualityScore)  # the real ROS 2 message type reads it too
        assert rm.grade == f.grade and rm.header.frame_id == "us_probe_link"


# ------------------------------------------------------------------------------------------------ errors
def _eval(bag: Path, out: Path, *extra: str) -> int:
    return bag_eval.main([str(bag), "--out", str(out), "--no-progress", *extra])


def test_missing_and_corrupt_bags(raw_bag, tmp_path, capsys):
    out = tmp_path / "out"
    assert _eval(tmp_path / "nope", out) == 1
    assert "does not exist" in capsys.readouterr().err
    # garbage metadata
    bad = tmp_path / "bad_meta"
    shutil.copytree(raw_bag.path, bad)
    (bad / "metadata.yaml").write_text("rosbag2_bagfile_information: [this is not: a bag\n")
    assert _eval(bad, out) == 1
    assert "cannot be opened" in capsys.readouterr().err
    # database cut in half: fails while reading, after some frames were decoded
    cut = tmp_path / "cut"
    shutil.copytree(raw_bag.path, cut)
    db = next(cut.glob("*.db3"))
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    assert _eval(cut, out) == 1
    assert "corrupt" in capsys.readouterr().err
    # mcap cut in half
    made = make_bag.write_image_bag(tmp_path / "m", [np.zeros((64, 64), np.uint8)] * 30, 25.0, storage="mcap")
    f = next(made.path.glob("*.mcap"))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert _eval(made.path, out) == 1
    assert "error" in capsys.readouterr().err
    # a damaged message in the middle: batches before it were already scored, yet nothing is written
    with bagio.atomic_bag(tmp_path / "mid") as w:
        c = bagio.add_image_connection(w, "/us/image", bagio.IMAGE_TYPE)
        for i in range(30):
            m = bagio.image_message(np.full((64, 64), 4 * i, np.uint8), START_NS + i * 10**7, "f")
            w.write(c, START_NS + i * 10**7, b"\x00\x01\x00\x00" + b"\xff" * 64 if i == 20 else bagio.serialize(m))
    assert _eval(tmp_path / "mid", out, "--batch", "4") == 1
    assert "corrupt at message 20" in capsys.readouterr().err
    assert _no_outputs(out)


def test_wrong_topic_lists_existing_topics(raw_bag, tmp_path, capsys):
    out = tmp_path / "out"
    assert _eval(raw_bag.path, out, "--topic", "/camera/image") == 1
    err = capsys.readouterr().err
    assert "'/camera/image' not in the bag" in err and "/us/image (sensor_msgs/msg/Image, 24 msgs)" in err
    assert _no_outputs(out)


def test_empty_bags(tmp_path, capsys):
    out = tmp_path / "out"
    with bagio.atomic_bag(tmp_path / "no_topics") as w:
        w.add_connection("/rosout", "rcl_interfaces/msg/Log", typestore=bagio.typestore())
    assert _eval(tmp_path / "no_topics", out) == 1
    assert "no image topics" in capsys.readouterr().err
    with bagio.atomic_bag(tmp_path / "no_msgs", "mcap") as w:
        bagio.add_image_connection(w, "/us/image", bagio.IMAGE_TYPE)
    assert _eval(tmp_path / "no_msgs", out) == 1
    assert "no messages (empty bag)" in capsys.readouterr().err
    assert _no_outputs(out)


def test_unsupported_encoding(tmp_path, capsys):
    ts = bagio.typestore()
    with bagio.atomic_bag(tmp_path / "yuv") as w:
        c = bagio.add_image_connection(w, "/us/image", bagio.IMAGE_TYPE)
        for i in range(3):
            m = bagio.image_message(np.zeros((8, 16), np.uint8), START_NS + i, "f")
            m.encoding = "yuv422"
            w.write(c, START_NS + i, bytes(ts.serialize_cdr(m, bagio.IMAGE_TYPE)))
    out = tmp_path / "out"
    assert _eval(tmp_path / "yuv", out) == 1
    err = capsys.readouterr().err
    assert "unsupported_encoding" in err and "yuv422" in err
    assert _no_outputs(out)


def test_bag_tools_import_without_rclpy():
    code = (
        "import sys\n"
        "import usiqa_ros.tools.bag_eval, usiqa_ros.tools.bag_report, usiqa_ros.tools.make_bag\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'sensor_msgs', 'usiqa_msgs', 'std_msgs')]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------------------------------------ live replay
def test_live_replay_accounts_for_every_frame(ros, raw_bag, tmp_path):
    from ros_helpers import Spinner, running_iqa_node

    from usiqa_ros.nodes import replay

    # reliable, with a history deep enough for the whole bag: no frame may be lost in transport
    params = dict(image_topic="/bagrp/image", quality_topic="/bagrp/quality", qos_reliability="reliable", qos_depth=50)
    with running_iqa_node("iqa_bag_replay", **params) as node:
        rep = replay.Replayer("/bagrp/image", bagio.IMAGE_TYPE, "/bagrp/quality")
        spin = Spinner(rep)
        try:
            replay.wait_for_node(rep, 20.0)
            res = replay.replay_into(rep, raw_bag.path, "/us/image", rate=1.0, drain_s=10.0)
            stats = node.stats_snapshot()
        finally:
            spin.stop()
            rep.destroy_node()
    r = replay.report(res)
    assert r["published"] == N and stats.received == N
    assert r["scored"] == stats.scored >= 1
    assert r["scored"] + r["skipped"] == N
    assert r["skipped_reported_by_node"] == stats.skipped and r["lost_or_rejected"] == 0
    assert r["unmatched_scores"] == 0
    lat = r["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert r["node_latency_ms"]["p50"] > 0 and r["scored_fps"] > 0
    assert 12.0 < r["published_fps"] <= 25.5  # the recorded 25 fps, never faster; loosely slower (shared CPU)
    assert set(res.scores) <= set(raw_bag.stamps_ns)  # scores carry the recorded stamps
    replay.write_outputs(res, r, tmp_path / "rp", quality_topic="/bagrp/quality")
    with bagio.open_bag(tmp_path / "rp" / "scores_bag") as rd:
        assert bagio.topics(rd) == {"/bagrp/quality": (bagio.QUALITY_TYPE, r["scored"])}
    assert json.loads((tmp_path / "rp" / "replay.json").read_text())["published"] == N
    assert len(_read_csv(tmp_path / "rp" / "latency.csv")) == N
