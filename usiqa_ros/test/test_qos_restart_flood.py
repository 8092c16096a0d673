"""Transport faults through a real running iqa_node: QoS mismatch (detected, logged with a hint, shown on
/diagnostics), the reverse combination (works), a restarted publisher (scoring resumes), and a short flood of
1920x1080 rgb8 frames (alive, keeps scoring recent frames). No timing assertions: the flood's figures are
measured by benchmarks/flood.py."""

from __future__ import annotations

import time

import cv2
from diagnostic_msgs.msg import DiagnosticStatus
from peer_helpers import Peer
from rclpy.qos import qos_profile_sensor_data
from ros_helpers import Spinner, image_msg, running_iqa_node, sample_frames, wait_for
from sensor_msgs.msg import Image

from usiqa_ros.core.convert import array_to_image

FRAME = sample_frames(1)[0]
WARN = DiagnosticStatus.WARN[0]


def _params(ns: str, **extra):
    base = dict(image_topic=f"/{ns}/image", quality_topic=f"/{ns}/quality", diagnostics_period_s=0.2)
    return base | {"diag_stale_input_s": 0.0} | extra


def test_reliable_subscription_vs_best_effort_publisher_is_reported(ros):
    ns, name = "qos_mismatch", "iqa_qos_mismatch"
    with running_iqa_node(name, **_params(ns, qos_reliability="reliable")) as node:
        peer = Peer(name, ns, image_qos=qos_profile_sensor_data)  # best effort: incompatible with reliable
        spin = Spinner(peer)
        try:
            hint = wait_for(lambda: [w for w in peer.warnings() if "incompatible QoS" in w], 15)[0]
            assert f"/{ns}/image" in hint and "reliability" in hint and "qos_reliability:=best_effort" in hint
            wait_for(lambda: peer.diag_level() == WARN and "incompatible QoS" in peer.diag[-1].message, 10)
            assert int(peer.latest_diag()[f"qos_incompatible./{ns}/image"]) >= 1
            for i in range(5):
                peer.image_pub.publish(image_msg(FRAME, i + 1, frame_id=str(i)))
                time.sleep(0.05)
            time.sleep(1.0)
            assert node.stats_snapshot().received == 0 and not peer.scores  # DDS delivers nothing
        finally:
            spin.stop()
            peer.destroy_node()


def test_best_effort_subscription_accepts_reliable_publisher(ros):
    ns, name = "qos_reverse", "iqa_qos_reverse"
    with running_iqa_node(name, **_params(ns, qos_reliability="best_effort")):
        peer = Peer(name, ns, image_qos=10)  # reliable publisher, best-effort subscription: compatible
        spin = Spinner(peer)
        try:
            wait_for(lambda: peer.image_pub.get_subscription_count() > 0, 15)
            wait_for(lambda: peer.count_publishers(f"/{ns}/quality") > 0, 15)

            def publish_until_scored():
                peer.image_pub.publish(image_msg(FRAME, 7, frame_id="reliable-pub"))
                time.sleep(0.2)
                return peer.scores

            wait_for(publish_until_scored, 20)
            assert not [w for w in peer.warnings() if "incompatible QoS" in w]
        finally:
            spin.stop()
            peer.destroy_node()


def test_publisher_restart_scoring_resumes(ros):
    ns, name = "restart", "iqa_restart"
    with running_iqa_node(name, **_params(ns, qos_reliability="reliable")):
        watcher = Peer(name, ns)  # subscribes to the scores; its own image publisher is unused
        spin = Spinner(watcher)
        try:
            for generation in range(3):  # a camera driver that dies and comes back, each time a new node
                from rclpy.node import Node

                cam = Node(f"camera_{generation}")
                pub = cam.create_publisher(Image, f"/{ns}/image", 10)
                spin.add(cam)
                wait_for(lambda pub=pub: pub.get_subscription_count() > 0, 15)
                wait_for(lambda: watcher.count_publishers(f"/{ns}/quality") > 0, 15)
                fid = f"gen-{generation}"
                pub.publish(image_msg(FRAME, generation + 1, frame_id=fid))
                wait_for(lambda fid=fid: any(s.header.frame_id == fid for s in watcher.scores), 20)
                spin.executor.remove_node(cam)
                cam.destroy_node()
        finally:
            spin.stop()
            watcher.destroy_node()


def test_short_flood_of_full_hd_frames(ros):
    """A few seconds of 1920x1080 rgb8 as fast as this process can publish (SensorDataQoS)."""
    ns, name = "shortflood", "iqa_shortflood"
    big = cv2.cvtColor(cv2.resize(FRAME, (1920, 1080)), cv2.COLOR_GRAY2RGB)
    msg = array_to_image(big, Image, "rgb8")
    with running_iqa_node(name, **_params(ns)) as node:
        peer = Peer(name, ns, image_qos=qos_profile_sensor_data)
        spin = Spinner(peer)
        try:
            wait_for(lambda: peer.image_pub.get_subscription_count() > 0, 15)
            wait_for(lambda: peer.count_publishers(f"/{ns}/quality") > 0, 15)
            n, t_end = 0, time.monotonic() + 4.0
            while time.monotonic() < t_end:
                msg.header.stamp.sec, msg.header.frame_id = n + 1, str(n)
                peer.image_pub.publish(msg)
                n += 1
            last = n - 1
            # after the flood the node still scores, and a fresh frame is scored promptly
            msg.header.frame_id = "after"
            msg.header.stamp.sec = n + 1

            def send_after():
                peer.image_pub.publish(msg)
                time.sleep(0.3)
                return any(s.header.frame_id == "after" for s in peer.scores)

            wait_for(send_after, 30)
            stats = node.stats_snapshot()
            flood_scores = [int(s.header.frame_id) for s in peer.scores if s.header.frame_id.isdigit()]
            assert flood_scores, "nothing scored during the flood"
            assert flood_scores == sorted(flood_scores)  # never works through a backlog out of order
            assert stats.skipped > 0 and stats.scored < stats.received <= n + 50
            assert not stats.errors and stats.consecutive_failures == 0  # and "after" was scored: the worker lives
            assert max(flood_scores) > last // 2  # it kept scoring through the flood, not only at its start
        finally:
            spin.stop()
            peer.destroy_node()
