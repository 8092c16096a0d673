"""Teaching the target view on a real IqaNode (real model, real rclpy services and action client): capture,
clear, save and reload at configure; a corrupt or other-model set fails configure with one message and can be
retried; the best-view search returns the taught view when it reappears among other views of the same clip."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from ros_helpers import Spinner, shut_down, wait_for
from std_srvs.srv import Trigger
from test_best_view import peer_for, stamp_ns
from usiqa_msgs.srv import CaptureReferences

from usiqa_ros.core.references import REFERENCE_FILE, ReferenceFrame, ReferenceSet, combine
from usiqa_ros.ros.teach import TeachError, teach

TAUGHT_CLIP = "pocus_healthy_neuruppin_pat1_132943"


@contextmanager
def ref_node(ns: str, **params):
    """An IqaNode in `ns`, eager backend (start-up without an ONNX export), reliable input; not configured."""
    from usiqa_ros.ros.iqa_node import IqaNode

    params = {"qos_reliability": "reliable", "backend": "eager", "autostart": False} | params
    node = IqaNode("iqa", namespace=ns, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    spinner = Spinner(node)
    try:
        yield node
    finally:
        shut_down(node)
        spinner.stop()
        node.destroy_node()


def call(peer, srv_type, name: str, request=None, timeout: float = 30.0):
    client = peer.create_client(srv_type, name)
    try:
        assert client.wait_for_service(timeout_sec=15), f"service {name} not offered"
        future = client.call_async(request or srv_type.Request())
        wait_for(future.done, timeout)
        return future.result()
    finally:
        peer.destroy_client(client)


def clip(real_us: Path, name: str) -> list[np.ndarray]:
    files = sorted((real_us / "clips" / name).glob("frame_*.png"))
    assert len(files) == 48
    return [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]


def test_capture_clear_save_and_reload_at_configure(ros, real_us, tmp_path):
    ns = "/refs_a"
    refs_dir = tmp_path / "refs"
    frames = clip(real_us, TAUGHT_CLIP)
    with ref_node(ns, reference_dir=str(refs_dir), reference_history=4) as node:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        with peer_for(node, ns) as peer:
            cap = f"{ns}/iqa/capture_reference"
            r = call(peer, CaptureReferences, cap, CaptureReferences.Request(count=2))
            assert not r.success and "no new scored frame" in r.message and r.set_size == 0
            stamps = peer.feed(frames[:6])
            before = peer.scores[stamps[-1]]
            assert math.isnan(before.view_score) and before.score == before.artifact_score
            r = call(peer, CaptureReferences, cap, CaptureReferences.Request(count=2))
            assert r.success and r.added == 2 and r.set_size == 2, r.message
            r = call(peer, CaptureReferences, cap, CaptureReferences.Request(count=100))  # bounded history: 4
            assert r.success and r.added == 2 and r.set_size == 4, r.message  # frames 2, 3 (4, 5 already held)
            r = call(peer, CaptureReferences, cap, CaptureReferences.Request(count=1))
            assert not r.success and "no new scored frame" in r.message and r.set_size == 4
            assert len(node.references) == 4
            s = peer.scores[peer.feed([frames[4]])[0]]  # a captured view: like a reference
            assert 0.9 <= s.view_score <= 1.0
            assert s.score == pytest.approx(combine(s.artifact_score, s.view_score), rel=1e-5)
            far = peer.scores[peer.feed([frames[47]])[0]]
            assert far.view_score < s.view_score
            r = call(peer, Trigger, f"{ns}/iqa/save_references")
            assert r.success and str(refs_dir) in r.message, r.message
            saved = ReferenceSet.load(refs_dir, node.engine.model_id)
            assert [f.stamp_ns for f in saved.frames] == [stamps[4], stamps[5], stamps[2], stamps[3]]
            assert saved.frames[0].frame_id == "us_probe_link" and {f.group for f in saved.frames} == {0, 1}
            r = call(peer, Trigger, f"{ns}/iqa/clear_references")
            assert r.success and "cleared 4" in r.message
            after = peer.scores[peer.feed([frames[4]])[0]]
            assert math.isnan(after.view_score) and after.score == after.artifact_score
            assert (refs_dir / REFERENCE_FILE).is_file()  # clearing keeps the saved set
        # reload at configure
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.references is None
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert len(node.references) == 4
        np.testing.assert_array_equal(node.references.embeddings, saved.embeddings)
        status = {kv.key: kv.value for kv in node.diagnostics.status().values}
        assert status["reference_views"] == "4"


def test_bad_set_fails_configure_with_one_message_and_can_be_retried(ros, tmp_path):
    ns = "/refs_b"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / REFERENCE_FILE).write_bytes(b"\x00" * 100)
    other = tmp_path / "other"
    ReferenceSet("usqnet_lite@00000000", np.ones((2, 8), np.float32), [ReferenceFrame(group=i) for i in range(2)]).save(
        other
    )
    with ref_node(ns, reference_dir=str(bad)) as node:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        err = node.diagnostics.configure_error
        assert str(bad / REFERENCE_FILE) in err and "corrupt" in err and "\n" not in err
        assert node.engine is None
        node.set_parameters([Parameter("reference_dir", value=str(other))])
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        err = node.diagnostics.configure_error
        assert str(other / REFERENCE_FILE) in err and "made with model usqnet_lite@00000000" in err
        # fix: an empty folder to teach into -> configure succeeds, no references
        node.set_parameters([Parameter("reference_dir", value=str(tmp_path / "new"))])
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.diagnostics.configure_error == "" and len(node.references) == 0


def test_reference_dir_of_frames_is_embedded_at_configure(ros, real_us, tmp_path):
    frames = clip(real_us, TAUGHT_CLIP)
    d = tmp_path / "frames"
    d.mkdir()
    for i in (0, 2, 4):
        cv2.imwrite(str(d / f"ref_{i}.png"), frames[i])
    with ref_node("/refs_c", reference_dir=str(d)) as node:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert len(node.references) == 3 and [f.source for f in node.references.frames][0] == "ref_0.png"
        emb = np.stack([s.embedding for s in node.engine.score([frames[0]])])
        assert node.references.view_scores(emb)[0] > 0.9


def test_best_view_returns_the_taught_view_when_it_reappears(ros, real_us):
    """Teach frames 0, 2, 4, 6 of a clip; search over later frames of the same clip with the held-out frames 1,
    3, 5 of the taught view reinserted in the middle: the search returns one of those."""
    ns = "/refs_d"
    frames = clip(real_us, TAUGHT_CLIP)
    with ref_node(ns) as node:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        with peer_for(node, ns) as peer:
            peer.feed([frames[i] for i in (0, 2, 4, 6)])
            r = teach(peer, count=4, server=f"{ns}/iqa")  # the planner's one line (usiqa_ros.ros.teach)
            assert r.added == 4 and r.set_size == 4
            with pytest.raises(TeachError, match="no new scored frame"):
                teach(peer, count=4, server=f"{ns}/iqa")
            sweep = [frames[i] for i in range(16, 28)] + [frames[1], frames[3], frames[5]]
            sweep += [frames[i] for i in range(28, 48, 2)]
            search = peer.client.start(target_score=0.0, timeout=120.0)
            stamps = peer.feed(sweep)
            assert search.cancel()
            result = search.result(timeout=10)
            taught = set(stamps[12:15])
            best = stamp_ns(result.best.header)
            scores = {s: peer.scores[s] for s in stamps}
            assert best in taught, (
                f"returned frame {stamps.index(best)} (view {scores[best].view_score:.2f}); taught frames have view "
                f"{[round(scores[s].view_score, 2) for s in sorted(taught)]}"
            )
            assert result.best.score == max(s.score for s in scores.values())
            assert not math.isnan(result.best.view_score)
