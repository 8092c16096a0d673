"""iqa_node health on /diagnostics (diagnostic_msgs/DiagnosticArray), and QoS-mismatch detection.

One DiagnosticStatus per period (1 Hz by default) named `<node>: image quality`: input and scored rates over the
last period, skipped and refused shares, latency p50/p95 of the last scored frames, refusals by reason, warnings
by kind (e.g. zero stamps), model id, device, consecutive inference failures, incompatible-QoS events. The level
follows thresholds that are node parameters (changeable at run time, validated), so a robot supervisor or
diagnostic_aggregator can react to a stalled stream or a failing model without parsing logs.

Incompatible QoS (e.g. a reliable subscription and a best-effort camera driver) makes DDS deliver nothing, which
looks like a dead camera; the event callbacks here turn that into a log line with a hint and a WARN.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import CallbackGroup

try:
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # Humble (rclpy 3.x): the same classes live in rclpy.qos_event (renamed in Iron)
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks  # type: ignore[no-redef,unused-ignore]
from rclpy.node import Node
from rclpy.parameter import Parameter

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
# Error reasons that are not a malformed input (they have their own rule: consecutive failures).
NOT_INPUT_ERRORS = {"inference_error", "listener_error"}


@dataclass(frozen=True)
class _Threshold:
    default: float | int
    description: str
    lo: float
    hi: float


# Dynamic parameters (name -> default, description, allowed range). Ratios are shares of received frames.
THRESHOLDS: dict[str, _Threshold] = {
    "diag_latency_warn_s": _Threshold(0.25, "Latency p95 (receipt -> publish) above this [s]: WARN.", 0.0, 60.0),
    "diag_latency_error_s": _Threshold(1.0, "Latency p95 above this [s]: ERROR.", 0.0, 60.0),
    "diag_refused_share_warn": _Threshold(
        0.2, "Share of frames refused as malformed in the last period above this: WARN.", 0.0, 1.0
    ),
    "diag_refused_share_error": _Threshold(
        1.0, "Share of frames refused in the last period at or above this (with >= 1 refusal): ERROR.", 0.0, 1.0
    ),
    "diag_skipped_share_warn": _Threshold(
        0.95,
        "Share of frames overwritten unscored (newest-frame policy) in the last period above this: WARN.",
        0.0,
        1.0,
    ),
    "diag_stale_input_s": _Threshold(
        2.0, "Active and no frame received for this long [s]: WARN. 0 = off.", 0.0, 3600.0
    ),
    "diag_max_consecutive_failures": _Threshold(
        5, "This many inference failures in a row: ERROR (cleared by the next scored frame).", 1, 1_000_000
    ),
}


@dataclass
class NodeStats:
    """Counters since activation (the node copies them under its lock for a snapshot)."""

    received: int = 0
    scored: int = 0
    skipped: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    consecutive_failures: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=512))
    warnings: Counter[str] = field(default_factory=Counter)  # scored, but suspicious (zero stamp, no frame_id)


@dataclass
class Health:
    """What /diagnostics reports, as one consistent snapshot of the node (diagnostics never reads its internals)."""

    state: str  # unconfigured | inactive | active
    stats: NodeStats
    model_id: str = ""
    device: str = ""
    reference_views: int = 0


def parameter_descriptors() -> dict[str, tuple[Any, ParameterDescriptor]]:
    """name -> (default, descriptor with range) of the diagnostics parameters, for the node to declare."""
    out: dict[str, tuple[Any, ParameterDescriptor]] = {
        "diagnostics_period_s": (
            1.0,
            ParameterDescriptor(
                description="Period of the /diagnostics status [s] (1 Hz by default).",
                read_only=True,
                floating_point_range=[FloatingPointRange(from_value=0.05, to_value=60.0)],
            ),
        )
    }
    for name, t in THRESHOLDS.items():
        if isinstance(t.default, int):
            d = ParameterDescriptor(
                description=t.description,
                integer_range=[IntegerRange(from_value=int(t.lo), to_value=int(t.hi), step=1)],
            )
        else:
            d = ParameterDescriptor(
                description=t.description, floating_point_range=[FloatingPointRange(from_value=t.lo, to_value=t.hi)]
            )
        out[name] = (t.default, d)
    return out


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class IqaDiagnostics:
    """Publishes the node's DiagnosticStatus periodically and reports incompatible QoS with a hint.

    Needs of the node only what any rclpy Node has (the parameters of `parameter_descriptors()` declared) and
    `health`, a callable returning a consistent snapshot."""

    def __init__(self, node: Node, health: Callable[[], Health], callback_group: CallbackGroup | None = None) -> None:
        self.node = node
        self._health = health
        self._lock = threading.Lock()
        self.qos_incompatible: Counter[str] = Counter()  # topic -> incompatible-QoS events
        self.configure_error = ""  # last configure failure, reported as ERROR while unconfigured
        node.add_on_set_parameters_callback(self._on_set_parameters)
        self._prev: tuple[float, int, int, int, int] | None = None  # (time, received, scored, skipped, refused)
        self._last_input = time.monotonic()
        self._last_received = 0
        self.last_status: DiagnosticStatus | None = None
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._timer = node.create_timer(
            node.get_parameter("diagnostics_period_s").value, self.publish, callback_group=callback_group
        )

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, params: list[Parameter[Any]]) -> SetParametersResult:
        """Ranges are enforced by the descriptors; this checks that warn/error pairs stay ordered."""
        new = {p.name: p.value for p in params if p.name in THRESHOLDS}
        if not new:
            return SetParametersResult(successful=True)

        def value(name: str) -> float:
            return float(new.get(name, self.node.get_parameter(name).value))

        if value("diag_latency_warn_s") > value("diag_latency_error_s"):
            return SetParametersResult(successful=False, reason="diag_latency_warn_s must be <= diag_latency_error_s")
        if value("diag_refused_share_warn") > value("diag_refused_share_error"):
            return SetParametersResult(
                successful=False, reason="diag_refused_share_warn must be <= diag_refused_share_error"
            )
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ QoS events
    def subscription_events(self, topic: str) -> SubscriptionEventCallbacks:
        return SubscriptionEventCallbacks(incompatible_qos=lambda info: self._incompatible(topic, "subscription", info))

    def publisher_events(self, topic: str) -> PublisherEventCallbacks:
        return PublisherEventCallbacks(incompatible_qos=lambda info: self._incompatible(topic, "publisher", info))

    def _incompatible(self, topic: str, side: str, info: Any) -> None:
        policy = str(info.last_policy_kind).rsplit(".", 1)[-1].replace("RMW_QOS_POLICY_", "").lower()
        with self._lock:
            self.qos_incompatible[topic] += 1
        if side == "subscription":
            hint = (
                "a publisher offers a weaker QoS than this subscription requests, so nothing is delivered; "
                "camera drivers usually publish best_effort (SensorDataQoS): set qos_reliability:=best_effort, "
                "or make the publisher reliable"
            )
        else:
            hint = "a subscriber requests a stronger QoS than this publisher offers (reliable, volatile, depth 10)"
        self.node.get_logger().warning(
            f"incompatible QoS on {topic} ({side}, policy {policy}, {info.total_count} so far): {hint}"
        )

    # ------------------------------------------------------------------ status
    def _thresholds(self) -> dict[str, Any]:
        return {name: self.node.get_parameter(name).value for name in THRESHOLDS}

    def status(self) -> DiagnosticStatus:
        node = self.node
        th = self._thresholds()
        now = time.monotonic()
        health = self._health()
        stats = health.stats
        refused = sum(n for reason, n in stats.errors.items() if reason not in NOT_INPUT_ERRORS)
        active = health.state == "active"
        prev = self._prev
        if prev is None or stats.received < prev[1] or stats.scored < prev[2]:  # first call, or reset on activation
            prev = (now - 1e-9, stats.received, stats.scored, stats.skipped, refused)
            self._last_input = now
        dt = max(now - prev[0], 1e-9)
        d_recv, d_scored = stats.received - prev[1], stats.scored - prev[2]
        d_skipped, d_refused = stats.skipped - prev[3], max(refused - prev[4], 0)
        self._prev = (now, stats.received, stats.scored, stats.skipped, refused)
        if stats.received != self._last_received:
            self._last_input = now
            self._last_received = stats.received
        lat = list(stats.latencies_s)
        p50, p95 = _percentile(lat, 50), _percentile(lat, 95)
        skipped_share = d_skipped / d_recv if d_recv else 0.0
        refused_share = d_refused / d_recv if d_recv else 0.0
        with self._lock:
            qos_bad = dict(self.qos_incompatible)

        problems: list[tuple[int, str]] = []
        if health.state == "unconfigured":
            if self.configure_error:
                problems.append((ERROR, f"configure failed: {self.configure_error}"))
            else:
                problems.append((OK, "unconfigured"))
        elif not active:
            problems.append((OK, "inactive (not scoring)"))
        if stats.consecutive_failures >= th["diag_max_consecutive_failures"]:
            problems.append((ERROR, f"{stats.consecutive_failures} consecutive inference failures"))
        if lat and p95 > th["diag_latency_error_s"]:
            problems.append((ERROR, f"latency p95 {p95 * 1e3:.0f} ms"))
        elif lat and p95 > th["diag_latency_warn_s"]:
            problems.append((WARN, f"latency p95 {p95 * 1e3:.0f} ms"))
        if d_refused and refused_share >= th["diag_refused_share_error"]:
            problems.append((ERROR, f"{refused_share:.0%} of frames refused"))
        elif d_refused and refused_share > th["diag_refused_share_warn"]:
            problems.append((WARN, f"{refused_share:.0%} of frames refused"))
        if d_recv and skipped_share > th["diag_skipped_share_warn"]:
            problems.append((WARN, f"{skipped_share:.0%} of frames skipped (input faster than the model)"))
        idle = now - self._last_input
        if active and th["diag_stale_input_s"] > 0 and idle > th["diag_stale_input_s"]:
            problems.append((WARN, f"no frames for {idle:.1f} s"))
        if qos_bad:
            problems.append((WARN, f"incompatible QoS on {', '.join(sorted(qos_bad))}"))

        level = max((lv for lv, _ in problems), default=OK)
        message = "; ".join(m for lv, m in problems if lv == level) or "scoring"
        values = {
            "state": health.state,
            "input_rate_hz": f"{d_recv / dt:.2f}",
            "scored_rate_hz": f"{d_scored / dt:.2f}",
            "skipped_share": f"{skipped_share:.3f}",
            "refused_share": f"{refused_share:.3f}",
            "latency_p50_ms": f"{p50 * 1e3:.1f}",
            "latency_p95_ms": f"{p95 * 1e3:.1f}",
            "frames_received": str(stats.received),
            "frames_scored": str(stats.scored),
            "frames_skipped": str(stats.skipped),
            "frames_refused": str(refused),
            "inference_failures": str(stats.errors.get("inference_error", 0)),
            "consecutive_inference_failures": str(stats.consecutive_failures),
            "model_id": health.model_id,
            "device": health.device,
            "reference_views": str(health.reference_views),
        }
        values |= {f"errors.{reason}": str(n) for reason, n in sorted(stats.errors.items())}
        values |= {f"warning.{kind}": str(n) for kind, n in sorted(stats.warnings.items())}
        values |= {f"qos_incompatible.{topic}": str(n) for topic, n in sorted(qos_bad.items())}
        return DiagnosticStatus(
            level=level,
            name=f"{node.get_name()}: image quality",
            message=message,
            hardware_id=values["device"] or "none",
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )

    def publish(self) -> None:
        try:
            st = self.status()
        except Exception as e:  # noqa: BLE001 - diagnostics must never take the node down
            st = DiagnosticStatus(
                level=ERROR, name=f"{self.node.get_name()}: image quality", message=f"diagnostics failed: {e!r}"
            )
        self.last_status = st
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.node.get_clock().now().to_msg()
        self._pub.publish(arr)


def status_values(status: DiagnosticStatus) -> dict[str, str]:
    """KeyValue list -> dict (for tests and tools)."""
    return {kv.key: kv.value for kv in status.values}
