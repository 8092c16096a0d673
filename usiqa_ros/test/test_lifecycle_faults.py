"""Lifecycle, runtime parameters and faults, driven only through the node's real ROS services.

Lifecycle transitions go through `/<node>/change_state` and `/<node>/get_state`, parameters through
`/<node>/set_parameters`, failures are read from /rosout and /diagnostics. The inference fault is injected by
replacing the forward method of the node's real engine for a few frames (fault injection, not a mock).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from peer_helpers import Peer
from rclpy.parameter import Parameter
from ros_helpers import Spinner, image_msg, sample_frames, shut_down, wait_for
from safetensors import safe_open
from safetensors.torch import save_file

from usiqa_ros.core.checkpoint import DEFAULT_CHECKPOINT

REPO = Path(__file__).resolve().parents[2]
FRAME = sample_frames(1)[0]
ERROR = DiagnosticStatus.ERROR[0]
OK = DiagnosticStatus.OK[0]


def _start(name: str, **params):
    from usiqa_ros.ros.iqa_node import IqaNode

    params.setdefault("diagnostics_period_s", 0.1)
    params.setdefault("diag_stale_input_s", 0.0)
    node = IqaNode(name, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    return node, Spinner(node)


def _stop(node, spinner, *peers) -> None:
    shut_down(node)
    spinner.stop()
    for p in peers:
        p.destroy_node()
    node.destroy_node()


def _rewrite_metadata(src: Path, dst: Path, change) -> None:
    with safe_open(str(src), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["usiqa"])
    change(meta, state)
    save_file(state, str(dst), metadata={"usiqa": json.dumps(meta)})


def _send_and_wait_score(peer: Peer, frame_id: str, timeout: float = 20.0):
    peer.image_pub.publish(image_msg(FRAME, time.time_ns(), frame_id=frame_id))
    return wait_for(lambda: next((s for s in peer.scores if s.header.frame_id == frame_id), None), timeout)


# ------------------------------------------------------------------------------------------ lifecycle
def test_lifecycle_through_services(ros):
    ns, name = "lc", "iqa_lc"
    node, spin = _start(name, image_topic=f"/{ns}/image", quality_topic=f"/{ns}/quality", qos_reliability="reliable")
    peer = Peer(name, ns)
    spin.add(peer)
    try:
        assert peer.state() == "unconfigured"
        assert peer.transition("configure")
        assert peer.state() == "inactive" and node.engine is not None
        # inactive: no image subscription, nothing scored
        peer.image_pub.publish(image_msg(FRAME, 1, frame_id="while-inactive"))
        wait_for(lambda: peer.latest_diag().get("state") == "inactive", 10)
        assert peer.transition("activate") and peer.state() == "active"
        wait_for(lambda: peer.image_pub.get_subscription_count() > 0, 15)
        wait_for(lambda: peer.count_publishers(f"/{ns}/quality") > 0, 15)
        _send_and_wait_score(peer, "active-1")
        assert peer.transition("deactivate") and peer.state() == "inactive"
        wait_for(lambda: peer.image_pub.get_subscription_count() == 0, 15)
        n_scores = len(peer.scores)
        for i in range(5):
            peer.image_pub.publish(image_msg(FRAME, 10 + i, frame_id=f"deactivated-{i}"))
        time.sleep(1.0)
        assert len(peer.scores) == n_scores
        assert not [s for s in peer.scores if s.header.frame_id.startswith(("while-inactive", "deactivated"))]
        assert peer.transition("cleanup") and peer.state() == "unconfigured" and node.engine is None
        # reconfigure with a changed configure-time parameter (allowed while unconfigured)
        assert peer.set_param("input_size", 192) == (True, "")
        assert peer.transition("configure") and node.engine.preprocess_config.input_size == 192
        assert peer.transition("activate")
        wait_for(lambda: peer.image_pub.get_subscription_count() > 0, 15)
        _send_and_wait_score(peer, "reactivated")
        assert not peer.errors()
    finally:
        _stop(node, spin, peer)


# ------------------------------------------------------------------------------------------ checkpoint faults
def _missing(p: Path) -> None:
    p.unlink(missing_ok=True)


def _directory(p: Path) -> None:
    p.unlink(missing_ok=True)
    p.mkdir()


def _unreadable(p: Path) -> None:
    shutil.copy(DEFAULT_CHECKPOINT, p)
    p.chmod(0)


def _truncated(p: Path) -> None:
    data = DEFAULT_CHECKPOINT.read_bytes()
    p.write_bytes(data[: len(data) // 3])


def _garbage(p: Path) -> None:
    # fixed bytes: os.urandom began with a pickle's PROTO opcode 0x80 once in 256 runs and read "is a pickle"
    data = random.Random(0).randbytes(4096)
    assert data[:1] != b"\x80" and not data.startswith(b"PK")
    p.write_bytes(data)


def _wrong_architecture(p: Path) -> None:
    # another backbone whose module tree builds (no view branch: resnet34 has no EfficientNet blocks), so the
    # failure is the weights that do not fit it
    _rewrite_metadata(
        DEFAULT_CHECKPOINT,
        p,
        lambda meta, state: meta["architecture"].update(backbone="resnet34", view_shared_blocks=0),
    )


def _bad_input_size(p: Path) -> None:
    _rewrite_metadata(DEFAULT_CHECKPOINT, p, lambda meta, state: meta["architecture"].update(input_size=100))


def _missing_tensor(p: Path) -> None:
    _rewrite_metadata(DEFAULT_CHECKPOINT, p, lambda meta, state: state.pop(sorted(state)[0]))


def _pickle_named_safetensors(p: Path) -> None:
    torch.save({"state_dict": {}, "metadata": "{}"}, p)


FAULTS = [
    (_missing, "does not exist"),
    (_directory, "not a regular file"),
    (_unreadable, "not readable"),
    (_truncated, "truncated or corrupt"),
    (_garbage, "truncated or corrupt"),
    (_wrong_architecture, "do not match architecture"),
    (_bad_input_size, "input_size 100"),
    (_missing_tensor, "missing"),
    (_pickle_named_safetensors, "is a pickle"),
]


@pytest.mark.parametrize("make_fault,problem", FAULTS, ids=[f.__name__.strip("_") for f, _ in FAULTS])
def test_bad_checkpoint_fails_configure_clearly_and_retry_succeeds(ros, tmp_path, make_fault, problem):
    if make_fault is _unreadable and os.geteuid() == 0:
        pytest.skip("root can read a mode-000 file")
    path = tmp_path / "model.safetensors"
    make_fault(path)
    name = f"iqa_fault_{make_fault.__name__.strip('_')}"
    node, spin = _start(name, model_path=str(path))
    peer = Peer(name)
    spin.add(peer)
    try:
        assert not peer.transition("configure")
        assert peer.state() == "unconfigured" and node.engine is None
        errors = wait_for(peer.errors, 10)
        time.sleep(0.3)
        errors = peer.errors()
        assert len(errors) == 1, errors  # one clear message ...
        assert str(path) in errors[0] and problem in errors[0], errors[0]  # ... naming the file and the problem
        assert "Traceback" not in errors[0]
        wait_for(lambda: peer.diag and peer.diag_level() == ERROR, 10)
        assert "configure failed" in peer.diag[-1].message and str(path) in peer.diag[-1].message
        # fix the file in place and retry the same transition
        if path.is_dir():
            path.rmdir()
        path.unlink(missing_ok=True)
        shutil.copy(DEFAULT_CHECKPOINT, path)
        assert peer.transition("configure"), peer.errors()
        assert peer.state() == "inactive" and node.engine is not None
        wait_for(lambda: peer.diag_level() == OK, 10)
    finally:
        _stop(node, spin, peer)


# ------------------------------------------------------------------------------------------ parameters
def test_runtime_parameters_validated_and_staged(ros):
    name = "iqa_params"
    node, spin = _start(name, model_path="/nonexistent/model.safetensors")
    peer = Peer(name)
    spin.add(peer)
    try:
        assert not peer.transition("configure")
        # fix the parameter (allowed while unconfigured) and retry
        assert peer.set_param("model_path", str(DEFAULT_CHECKPOINT)) == (True, "")
        assert peer.transition("configure")
        ok, reason = peer.set_param("model_path", "/elsewhere.safetensors")
        assert not ok and "unconfigured" in reason
        assert peer.transition("activate")
        ok, reason = peer.set_param("image_topic", "/other")
        assert not ok and "inactive" in reason
        ok, reason = peer.set_param("autostart", False)
        assert not ok and "read-only" in reason
        ok, reason = peer.set_param("max_pixels", 10)
        assert not ok and "read-only" in reason
        ok, reason = peer.set_param("diagnostics_period_s", 0.5)
        assert not ok and "read-only" in reason
        # dynamic ones: validated, applied to the running engine
        ok, reason = peer.set_param("crop", "bogus")
        assert not ok and "none, auto or roi" in reason
        ok, reason = peer.set_param("crop", 5)
        assert not ok and reason
        assert peer.set_param("crop", "auto") == (True, "") and node.engine.preprocess_config.crop == "auto"
        assert peer.set_param("roi", [10, 20, 100, 120])[0]
        assert peer.set_param("crop", "roi")[0]
        assert node.engine.preprocess_config.roi == (10, 20, 100, 120)
        ok, reason = peer.set_param("roi", [0, 0, 0, 0])
        assert not ok and "w, h > 0" in reason
        ok, reason = peer.set_param("log_throttle_s", -1.0)  # the descriptor's range (ros2 param describe shows it)
        assert not ok and "out of range" in reason and "Min: 0.0" in reason
        assert peer.set_param("log_throttle_s", 0.5) == (True, "")
        ok, reason = peer.set_param("diag_latency_warn_s", 5.0)  # above the error threshold (1.0)
        assert not ok and "diag_latency_error_s" in reason
        assert peer.set_param("diag_latency_warn_s", 0.5) == (True, "")
        ok, reason = peer.set_param("diag_max_consecutive_failures", 0)
        assert not ok and reason
        assert peer.set_param("diag_max_consecutive_failures", 2) == (True, "")
        assert node.get_parameter("diag_max_consecutive_failures").value == 2
        # back to inactive: activation-time parameters become settable
        assert peer.transition("deactivate")
        assert peer.set_param("qos_reliability", "sometimes")[0] is False
        assert peer.set_param("image_topic", "/other") == (True, "")
    finally:
        _stop(node, spin, peer)


# ------------------------------------------------------------------------------------------ device
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_falls_back_or_fails_when_required(ros):
    name = "iqa_cuda"
    node, spin = _start(name, device="cuda")
    peer = Peer(name)
    spin.add(peer)
    try:
        assert peer.transition("configure")
        assert node.engine.device.type == "cpu"
        wait_for(lambda: any("'cuda' requested but not available" in w for w in peer.warnings()), 10)
        wait_for(lambda: peer.latest_diag().get("device") == "cpu", 10)
        assert peer.transition("cleanup")
        assert peer.set_param("require_device", True)[0]
        assert not peer.transition("configure")
        wait_for(lambda: any("require_device" in e for e in peer.errors()), 10)
    finally:
        _stop(node, spin, peer)


# ------------------------------------------------------------------------------------------ inference faults
def test_injected_inference_exceptions(ros):
    ns, name = "inject", "iqa_inject"
    node, spin = _start(
        name,
        image_topic=f"/{ns}/image",
        quality_topic=f"/{ns}/quality",
        qos_reliability="reliable",
        diag_max_consecutive_failures=3,
    )
    peer = Peer(name, ns)
    spin.add(peer)
    try:
        assert peer.transition("configure") and peer.transition("activate")
        wait_for(lambda: peer.image_pub.get_subscription_count() > 0, 15)
        wait_for(lambda: peer.count_publishers(f"/{ns}/quality") > 0, 15)
        engine = node.engine
        real_forward = engine.forward_with_embedding  # the one inference call of the scoring path
        fail = [0]

        def faulty_forward(batch):
            if fail[0] > 0:
                fail[0] -= 1
                raise RuntimeError("injected fault: device lost")
            return real_forward(batch)

        engine.forward_with_embedding = faulty_forward
        _send_and_wait_score(peer, "before")

        def fail_one(i: int) -> None:
            fail[0] = 1
            peer.image_pub.publish(image_msg(FRAME, time.time_ns(), frame_id=f"fail-{i}"))
            wait_for(lambda: peer.latest_diag().get("errors.inference_error") == str(i), 10)

        fail_one(1)
        _send_and_wait_score(peer, "between")  # one failure, then a success: the run of failures resets
        wait_for(lambda: peer.latest_diag().get("consecutive_inference_failures") == "0", 10)
        for i in (2, 3):
            fail_one(i)
        assert peer.latest_diag()["consecutive_inference_failures"] == "2" and peer.diag_level() != ERROR
        fail_one(4)
        wait_for(lambda: peer.diag_level() == ERROR, 10)
        assert "3 consecutive inference failures" in peer.diag[-1].message
        assert not [s for s in peer.scores if s.header.frame_id.startswith("fail-")]
        out = _send_and_wait_score(peer, "recovered")
        assert 0.0 <= out.score <= 1.0
        wait_for(lambda: peer.latest_diag().get("consecutive_inference_failures") == "0", 10)
        wait_for(lambda: peer.diag_level() != ERROR, 10)
        lines = [w for w in peer.warnings() if "inference_error" in w]
        assert lines and "injected fault: device lost" in lines[0]
        assert len(lines) == 1  # rate-limited (log_throttle_s = 5 s); "recovered" above shows the worker lives
    finally:
        _stop(node, spin, peer)


# ------------------------------------------------------------------------------------------ main() / autostart
def _run_main(*ros_args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "usiqa_ros.ros.iqa_node", "--ros-args", *ros_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env=os.environ | (env or {}),
    )


def test_main_entry_point_autostart_failures_and_enclave(ros, tmp_path):
    """The `main()` path, five processes started together (they share the start-up cost):
    a bad model_path and a parameter of the wrong type exit non-zero with one message and no traceback;
    autostart:=false waits unconfigured; autostart (default) reaches active, here also with an SROS2 enclave
    argument and ROS_SECURITY_* set (Permissive: the Fast DDS of the pip wheels is built without the security
    plugins, so an enforced enclave cannot be exercised here); SIGINT exits 0. A fifth, sent SIGSEGV as a crash in
    native code would, leaves the Python stacks of its threads in its output (spin.trace_native_crashes)."""
    import signal

    security = {
        "ROS_SECURITY_ENABLE": "true",
        "ROS_SECURITY_STRATEGY": "Permissive",
        "ROS_SECURITY_KEYSTORE": str(tmp_path / "keystore"),
    }
    bad_path = _run_main("-p", "model_path:=/bad/path/model.safetensors")
    bad_type = _run_main("-p", "model_path:=5")
    procs = {
        "iqa_main_manual": _run_main("-r", "__node:=iqa_main_manual", "-p", "autostart:=false"),
        "iqa_main_auto": _run_main("-r", "__node:=iqa_main_auto", "--enclave", "/usiqa/iqa_node", env=security),
    }
    crash = _run_main("-r", "__node:=iqa_main_crash", "-p", "autostart:=false")
    peers = {n: Peer(n) for n in [*procs, "iqa_main_crash"]}
    spin = Spinner(*peers.values())
    try:
        out, _ = bad_path.communicate(timeout=120)
        assert bad_path.returncode != 0, out
        assert "/bad/path/model.safetensors" in out and "does not exist" in out, out
        assert "Traceback" not in out, out
        out, _ = bad_type.communicate(timeout=120)
        assert bad_type.returncode != 0, out
        assert "model_path" in out and "expecting type 'STRING'" in out and "Traceback" not in out, out
        for peer in peers.values():
            assert peer.get.wait_for_service(timeout_sec=90.0)
        assert peers["iqa_main_manual"].state() == "unconfigured"
        wait_for(lambda: peers["iqa_main_auto"].state() == "active", 90, interval=0.5)
        for p in procs.values():
            p.send_signal(signal.SIGINT)
        for n, p in procs.items():
            out, _ = p.communicate(timeout=30)
            assert p.returncode == 0, (n, out)
            assert "Traceback" not in out, out
        assert peers["iqa_main_crash"].state() == "unconfigured"
        crash.send_signal(signal.SIGSEGV)
        out, _ = crash.communicate(timeout=30)
        assert crash.returncode == -signal.SIGSEGV, out
        assert "Fatal Python error: Segmentation fault" in out and "usiqa_ros/ros/iqa_node.py" in out, out
    finally:
        for p in [bad_path, bad_type, crash, *procs.values()]:
            if p.poll() is None:
                p.kill()
        spin.stop()
        for p in peers.values():
            p.destroy_node()
