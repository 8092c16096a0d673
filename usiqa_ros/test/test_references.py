"""Reference views without ROS: the set's view score, its persistence (atomic, refusing corrupt or other-model
sets, surviving a killed writer), loading from a folder of frames or a bag, and the embedding of the scoring
pass from both backends."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from usiqa_ros.core import references as R
from usiqa_ros.core.references import ReferenceError, ReferenceFrame, ReferenceSet


def _set(n: int = 6, dim: int = 16, groups: int = 3, seed: int = 0, model: str = "m@1") -> ReferenceSet:
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=dim)
    emb = centre + 0.1 * rng.normal(size=(n, dim))
    return ReferenceSet(model, emb, [ReferenceFrame(i, "probe", "capture", i % groups) for i in range(n)])


def test_view_score_is_one_near_references_and_falls_with_distance():
    rs = _set()
    assert math.isfinite(rs.d0) and rs.d0 > 0
    rng = np.random.default_rng(1)
    near = rs.embeddings.mean(0)  # closer to every reference than they are to each other
    far = [rs.embeddings.mean(0) + r * rs.d0 * rng.normal(size=rs.dim) / math.sqrt(rs.dim) for r in (2, 4, 8, 30)]
    v = rs.view_scores(np.stack([near, *far]))
    assert v[0] > 0.9  # closer than the references are to each other
    assert np.all(np.diff(v) < 0), v  # monotone in the distance
    assert v[-1] < 0.01 and np.all((v >= 0) & (v <= 1))
    # d = d0 -> 0.9, d = 1.5 d0 -> 0.5 (the documented calibration)
    d0 = rs.d0
    probe = rs.embeddings.mean(0)
    direction = np.random.default_rng(5).normal(size=rs.dim)
    direction /= np.linalg.norm(direction)
    for ratio, want in ((1.0, 0.9), (1.5, 0.5)):
        lo, hi = 0.0, 100 * d0  # find the point along `direction` whose top-k distance is ratio * d0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if rs.distances(probe + mid * direction)[0] < ratio * d0 else (lo, mid)
        assert rs.view_scores(probe + lo * direction)[0] == pytest.approx(want, abs=1e-3)


def test_distances_follow_crl_top_k_rule():
    rs = _set(n=8)
    q = np.random.default_rng(2).normal(size=(3, rs.dim))
    d = np.sqrt(((q[:, None] - rs.embeddings[None]) ** 2).sum(-1))
    np.testing.assert_allclose(rs.distances(q), np.sort(d, 1)[:, : rs.top_k].mean(1), rtol=1e-5)


def test_calibration_leaves_out_the_whole_capture_group():
    # two captures of near-identical frames at two views: d0 must be the distance between the views, not the noise
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=32), rng.normal(size=32)
    emb = np.stack(
        [a + 1e-3 * rng.normal(size=32) for _ in range(5)] + [b + 1e-3 * rng.normal(size=32) for _ in range(5)]
    )
    rs = ReferenceSet("m", emb, [ReferenceFrame(group=i // 5) for i in range(10)])
    assert rs.d0 == pytest.approx(np.linalg.norm(a - b), rel=1e-2)


def test_combine_rule():
    assert R.combine(0.7, float("nan")) == pytest.approx(0.7)
    assert R.combine(0.7, 0.5) == pytest.approx(0.5)  # good enough: the view decides
    assert R.combine(0.9, 0.5) == R.combine(0.5, 0.5)  # no reordering of acceptable frames by artefact score
    assert R.combine(0.3, 0.5) == pytest.approx(0.5)  # FAIR or better keeps the view score
    assert R.combine(0.1, 0.5) == pytest.approx(0.2)  # a POOR frame loses its view score proportionally


def test_save_load_round_trip_with_metadata(tmp_path):
    rs = _set()
    path = rs.save(tmp_path, extra={"node": "/iqa"})
    assert path == tmp_path / R.REFERENCE_FILE
    back = ReferenceSet.load(tmp_path, "m@1")
    np.testing.assert_array_equal(back.embeddings, rs.embeddings)
    assert back.frames == rs.frames and back.d0 == pytest.approx(rs.d0)
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    assert meta["model_id"] == "m@1" and json.loads(meta["frames"])[2]["stamp_ns"] == 2 and meta["saved_utc"]
    assert not [p for p in tmp_path.iterdir() if p.name != R.REFERENCE_FILE]  # no temp file left


def test_other_model_is_refused_with_one_message_naming_the_file(tmp_path):
    _set(model="usqnet_lite@aaaa").save(tmp_path)
    with pytest.raises(ReferenceError, match=r"references\.safetensors was made with model usqnet_lite@aaaa"):
        ReferenceSet.load(tmp_path, "usqnet_lite@bbbb")


def test_set_of_the_descriptor_era_is_refused_with_the_reason(tmp_path):
    """Format /1 sets hold second-order descriptors, not view embeddings: distances to them would be meaningless."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = _set().save(tmp_path)
    with safe_open(str(path), framework="numpy") as f:
        meta, emb = f.metadata(), f.get_tensor("embeddings")
    save_file({"embeddings": emb}, str(path), metadata=meta | {"format": "usiqa-references/1"})
    with pytest.raises(ReferenceError, match=f"reference set {path} .*made before view embeddings: capture the"):
        ReferenceSet.load(tmp_path, "m@1")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_frames"])
def test_corrupt_set_is_refused(tmp_path, damage):
    path = _set().save(tmp_path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    else:
        from safetensors.numpy import save_file

        save_file({"embeddings": np.zeros((2, 4), np.float32)}, str(path), metadata={"format": R.FORMAT})
    with pytest.raises(ReferenceError, match=f"reference set {path} is corrupt"):
        ReferenceSet.load(tmp_path, "m@1")


_WRITER = """
import sys, numpy as np
from usiqa_ros.core.references import ReferenceSet, ReferenceFrame
out = sys.argv[1]
rng = np.random.default_rng(0)
i = 0
while True:
    n = 200 + 100 * (i % 2)
    rs = ReferenceSet("m@1", rng.normal(size=(n, 4096)).astype(np.float32), [ReferenceFrame(group=k) for k in range(n)])
    rs.save(out)
    print(n, flush=True)
    i += 1
"""


def test_killed_writer_never_leaves_a_half_written_set(tmp_path):
    """SIGKILL the process in the middle of saves (a crash): the set on disk is always a complete one."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() in ("200", "300")  # one complete save exists
        for delay in (0.05, 0.13, 0.21):
            time.sleep(delay)
            rs = ReferenceSet.load(tmp_path, "m@1")  # concurrent reader: always complete
            assert len(rs) in (200, 300)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    rs = ReferenceSet.load(tmp_path, "m@1")
    assert len(rs) in (200, 300) and rs.embeddings.shape[1] == 4096


def test_source_kinds_and_folder_loading(tmp_path):
    with pytest.raises(ReferenceError, match="does not exist"):
        R.source_kind(tmp_path / "nope")
    frames = tmp_path / "frames"
    frames.mkdir()
    with pytest.raises(ReferenceError, match="holds no images"):
        R.read_source_frames(frames)
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(frames / f"f{i}.png"), rng.integers(0, 255, (64, 80), dtype=np.uint8))
    assert R.source_kind(frames) == "frames"
    (frames / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ReferenceError, match="broken.png cannot be read"):
        R.read_source_frames(frames)
    (frames / "broken.png").unlink()
    rs = R.load_references(
        frames, "m", lambda fs: np.stack([f.astype(np.float32).mean((0, 1), keepdims=True)[0] for f in fs])
    )
    assert len(rs) == 3 and [f.source for f in rs.frames] == ["f0.png", "f1.png", "f2.png"]
    rs.save(frames)
    assert R.source_kind(frames) == "set"  # a saved set takes precedence over the images beside it


@pytest.fixture(scope="module")
def engines():
    from usiqa_ros.core.engine import Engine, EngineConfig

    return {b: Engine(EngineConfig(backend=b, device="cpu")) for b in ("eager", "onnxruntime")}


def test_both_backends_return_the_embedding_of_the_scoring_pass(engines):
    from usiqa_ros.tools.phantom import Phantom, sweep_pose

    ph = Phantom()
    frames = [ph.render(sweep_pose(t)).image for t in (0.0, 3.0, 6.0)]
    eager, ort = engines["eager"], engines["onnxruntime"]
    if ort.backend.name != "onnxruntime":
        pytest.skip("onnxruntime backend did not start here")
    a, b = eager.score(frames), ort.score(frames)
    model = eager.model
    import torch

    from usiqa_ros.core.preprocess import to_batch

    with torch.inference_mode():
        ref = model.view_embedding(to_batch([eager.preprocess(f) for f in frames])).numpy()
    for i in range(3):
        assert a[i].embedding.shape == ref[i].shape
        np.testing.assert_allclose(a[i].embedding, ref[i], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b[i].embedding, ref[i], rtol=1e-3, atol=1e-4)
        assert a[i].score == pytest.approx(b[i].score, abs=1e-3)


def test_bag_source_is_embedded_through_the_engine(tmp_path, engines):
    from usiqa_ros.core import bagio
    from usiqa_ros.tools.phantom import Phantom, ProbePose

    ph = Phantom()
    frames = [ph.render(ProbePose(x=float(x))).image for x in (0, 1, 2)]
    bag = tmp_path / "refs_bag"
    with bagio.atomic_bag(bag) as w:
        conn = bagio.add_image_connection(w, "/us/image", bagio.IMAGE_TYPE)
        for i, f in enumerate(frames):
            w.write(conn, 1000 + i, bagio.serialize(bagio.image_message(f, 5_000 + i, "probe")))
    eng = engines["eager"]
    rs = R.load_references(bag, eng.model_id, lambda fs: np.stack([s.embedding for s in eng.score(fs)]))
    assert len(rs) == 3 and [f.stamp_ns for f in rs.frames] == [5000, 5001, 5002]
    assert rs.frames[0].frame_id == "probe" and rs.frames[0].source.startswith("refs_bag:/us/image#")
    v = rs.view_scores(np.stack([s.embedding for s in eng.score(frames)]))
    assert np.all(v > 0.9)


@pytest.mark.parametrize("spread", [0.05, 1.0])
def test_bounded_top_k_search_is_exact(spread):
    """Above SEARCH_BASIS references the top-k search reads only candidates; it must equal brute force, for
    structured sets (low residual) and unstructured ones (bounds loose), for near and far queries."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(40, 300))
    n = R.SEARCH_BASIS * 3
    emb = centres[rng.integers(0, 40, n)] + spread * rng.normal(size=(n, 300))
    rs = ReferenceSet("m", emb, [ReferenceFrame(group=i // 4) for i in range(n)], top_k=5)
    assert rs._basis is not None
    q = np.concatenate([centres[:5] + 0.1 * rng.normal(size=(5, 300)), 3 * rng.normal(size=(5, 300))])
    d = np.sqrt(((q[:, None] - rs.embeddings[None]) ** 2).sum(-1))
    np.testing.assert_allclose(rs.distances(q), np.sort(d, 1)[:, :5].mean(1), rtol=1e-4)
