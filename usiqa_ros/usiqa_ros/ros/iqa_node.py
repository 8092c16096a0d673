"""The IQA lifecycle node: image topic in, usiqa_msgs/QualityScore out, newest frame first.

Threads: the subscription callback only parks the message in a one-slot buffer (overwriting, and counting, a
frame still waiting); a dedicated worker thread converts, preprocesses, scores and publishes. So the node
never builds a backlog, the executor stays free for actions, parameters and diagnostics, and the model runs
on exactly one thread of control. Score listeners (the best-view action server) are called from the worker
after each publish with the score and the frame.

Lifecycle: configure loads and warms up the model (a bad checkpoint fails here, with one message naming the
file); activate creates publishers and subscriptions and starts the worker; deactivate stops them (the model
stays loaded, so re-activation is immediate); cleanup and shutdown drop the model. With autostart (default) the
node configures and activates itself. destroy_node() stops the worker too.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger
from usiqa_msgs.msg import QualityScore
from usiqa_msgs.srv import CaptureReferences

from usiqa_ros.core.checkpoint import CheckpointError
from usiqa_ros.core.convert import check_header, compressed_to_array, image_to_array
from usiqa_ros.core.engine import Engine, EngineConfig, EngineError, FrameScore
from usiqa_ros.core.preprocess import FrameError
from usiqa_ros.core.references import ReferenceError, ReferenceFrame, ReferenceSet, combine, is_bag, load_references
from usiqa_ros.ros.annotate import DebugImage
from usiqa_ros.ros.best_view import BestViewConfig, BestViewServer, ScoreListener
from usiqa_ros.ros.diagnostics import Health, IqaDiagnostics, NodeStats, parameter_descriptors
from usiqa_ros.ros.spin import (
    MultiThreadedExecutor,
    shutdown_on_sigint,
    spin_until_shutdown,
    trace_native_crashes,
)


@dataclass
class _Pending:
    msg: Any
    compressed: bool
    received_ns: int


def qos_from(reliability: str, depth: int) -> QoSProfile:
    """SensorDataQoS (best effort, keep last 5, volatile) with reliability and depth overridable."""
    if reliability not in ("best_effort", "reliable"):
        raise ValueError(f"qos_reliability must be 'best_effort' or 'reliable', not {reliability!r}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=max(1, depth),
        reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


def _describe_qos(topic: str, qos: QoSProfile) -> str:
    """`/image (best_effort, depth 5)`: the effective QoS, after the standard overrides."""
    return f"{topic} ({qos.reliability.name.lower()}, depth {qos.depth})"


class IqaNode(LifecycleNode):
    """Scores ultrasound frames with USQNet and publishes usiqa_msgs/QualityScore."""

    # Read by configure / activate: changeable only while unconfigured / not active (refused with a reason
    # otherwise), so a failed configure can be fixed and retried without restarting the process.
    CONFIGURE_TIME = {
        "model_path", "model_sha256", "allow_unsafe_pickle", "device", "require_device", "amp", "num_threads",
        "input_size", "backend", "num_interop_threads", "ort_graph_optimization", "ort_allow_spinning",
        "reference_dir", "reference_topic", "reference_top_k", "reference_history",
    }  # fmt: skip
    ACTIVATE_TIME = {"image_topic", "compressed_topic", "quality_topic"}

    def __init__(self, node_name: str = "iqa_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.engine: Engine | None = None
        self.stats = NodeStats()
        self._lock = threading.Lock()
        self._slot: _Pending | None = None
        self._slot_ready = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self._running = False
        self._skipped_since_publish = 0
        self._listeners: list[ScoreListener] = []
        self._last_log: dict[str, float] = {}
        self._pub: Publisher[Any] | None = None
        self._subs: list[Any] = []
        self.sub_group = MutuallyExclusiveCallbackGroup()
        self.aux_group = ReentrantCallbackGroup()  # actions, timers, services added by other modules
        self._best_view: BestViewServer | None = None
        self._best_view_config = BestViewConfig(enabled=False)
        self.debug_image = DebugImage(self)  # quality/image when debug_image is true (ros/annotate.py)
        # After the attributes: a bad parameter raises here, and destroy_node (rclpy calls it at shutdown) still works.
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.diagnostics = IqaDiagnostics(self, self.health, self.aux_group)  # /diagnostics at 1 Hz
        # Reference views (teach the target): replaced whole (copy on write), so the worker reads one set per frame.
        self.references: ReferenceSet | None = None
        self._ref_lock = threading.Lock()  # serialises capture / clear / save
        self._history: deque[tuple[np.ndarray, Any]] = deque(maxlen=1)  # (embedding, header), newest scored
        self.create_service(CaptureReferences, "~/capture_reference", self._on_capture, callback_group=self.aux_group)
        self.create_service(Trigger, "~/clear_references", self._on_clear, callback_group=self.aux_group)
        self.create_service(Trigger, "~/save_references", self._on_save, callback_group=self.aux_group)

    # ---------------------------------------------------------------- parameters
    def _declare_parameters(self) -> None:
        """Every parameter of the node, in one place. Numeric limits are descriptor ranges: rclpy enforces them
        (at start-up too) and `ros2 param describe` shows them."""

        def p(
            name: str,
            default: Any,
            description: str,
            dynamic: bool = False,
            ints: tuple[int, int] | None = None,
            floats: tuple[float, float] | None = None,
            **kw: Any,
        ) -> None:
            if ints is not None:
                kw["integer_range"] = [IntegerRange(from_value=ints[0], to_value=ints[1], step=1)]
            if floats is not None:
                kw["floating_point_range"] = [FloatingPointRange(from_value=floats[0], to_value=floats[1])]
            staged = name in self.CONFIGURE_TIME or name in self.ACTIVATE_TIME
            if name in self.CONFIGURE_TIME:
                description += " (Changeable only while unconfigured.)"
            elif name in self.ACTIVATE_TIME:
                description += " (Changeable only while not active.)"
            self.declare_parameter(
                name, default, ParameterDescriptor(description=description, read_only=not (dynamic or staged), **kw)
            )

        p("model_path", "", "Checkpoint (.safetensors). Empty = the bundled default model.")
        p("model_sha256", "", "Expected SHA-256 of model_path, verified before loading. Empty = no check.")
        p("allow_unsafe_pickle", False, "Accept .pt pickles (read with torch.load(weights_only=True)). Avoid.")
        p("device", "auto", "auto | cpu | cuda | cuda:N. Missing CUDA falls back to the CPU with a warning.")
        p("require_device", False, "Fail at configure instead of falling back to the CPU.")
        p("amp", False, "Mixed precision (fp16 on CUDA, bf16 on CPU).")
        p("num_threads", 0, "Intra-op threads of torch / ONNX Runtime; 0 = library default (1/core).", ints=(0, 1024))
        p("num_interop_threads", 0, "Inter-op threads of torch / ONNX Runtime; 0 = library default.", ints=(0, 1024))
        p(
            "backend",
            "auto",
            "Inference backend: auto (fastest measured that starts and matches eager) | onnxruntime | eager. "
            "A backend that cannot start falls back to eager with a warning.",
        )
        p("ort_graph_optimization", "all", "ONNX Runtime graph optimisation: disable | basic | extended | all.")
        p("ort_allow_spinning", True, "ONNX Runtime idle worker threads spin: lower latency, more CPU use.")
        p("input_size", 0, "Model input side in px; 0 = the checkpoint's.", ints=(0, 2048))
        p("crop", "none", "none | auto (non-black sector bounding box) | roi", dynamic=True)
        p("roi", [0, 0, 0, 0], "Crop rectangle [x, y, w, h] in px, used when crop = roi.", dynamic=True)
        p("image_topic", "image", "sensor_msgs/Image input topic (remappable).")
        p("compressed_topic", "", "sensor_msgs/CompressedImage input topic; empty = not subscribed.")
        # QoS is set at start-up, as for any ROS node: these two give the image subscriptions' default profile; the
        # standard qos_overrides./<topic>.subscription.reliability|depth|history parameters override it per topic.
        p(
            "qos_reliability",
            "best_effort",
            "Default reliability of the image subscriptions: best_effort (SensorDataQoS) | reliable. "
            "qos_overrides./<topic>.subscription.reliability overrides it.",
        )
        p(
            "qos_depth",
            5,
            "Default history depth of the image subscriptions (SensorDataQoS: 5). "
            "qos_overrides./<topic>.subscription.depth overrides it.",
            ints=(1, 10000),
        )
        p("quality_topic", "quality", "usiqa_msgs/QualityScore output topic.")
        p("debug_image", False, "Publish <quality_topic>/image: the frame with grade, score and a score bar drawn "
          "(bgr8, for rviz/rqt_image_view); drawn only while someone subscribes.")  # fmt: skip
        p("max_pixels", 4096 * 4096, "Frames with more pixels are refused before any allocation.", ints=(1, 2**31 - 1))
        p(
            "log_throttle_s",
            5.0,
            "Minimum seconds between two log lines for the same bad-frame reason.",
            dynamic=True,
            floats=(0.0, 3600.0),
        )
        p("autostart", True, "Configure and activate at start-up (no lifecycle manager needed).")
        p(
            "reference_dir",
            "",
            "Reference views of the target, loaded at configure: a folder (its references.safetensors if present, "
            "else its images), or a rosbag2 bag. ~/save_references writes references.safetensors into it. "
            "Empty = no references (view_score NaN, score = artifact_score).",
        )
        p("reference_topic", "", "Image topic of a reference_dir bag; empty = the bag's only image topic.")
        p(
            "reference_top_k",
            5,
            "View score: mean distance to the k nearest references (CRL-UIQA), for sets loaded from frames.",
            integer_range=[IntegerRange(from_value=1, to_value=100, step=1)],
        )
        p(
            "reference_history",
            64,
            "Newest scored frames whose embeddings ~/capture_reference can add (bounded memory).",
            integer_range=[IntegerRange(from_value=1, to_value=10000, step=1)],
        )
        p("best_view.enabled", True, "Offer the BestViewSearch action (best_view_search) while active.")
        p("best_view.goal_policy", "preempt", "A goal arriving while one runs: preempt (old ends PREEMPTED) | reject.")
        p("best_view.feedback_rate", 5.0, "Maximum best-view feedback rate [Hz]; 0 = no feedback.", floats=(0.0, 1e3))
        p(
            "best_view.no_image_grace_s",
            2.0,
            "A goal ends NO_IMAGES when no frame is scored within this many seconds.",
            floats=(0.01, 3600.0),
        )
        p(
            "best_view.stable_frames",
            1,
            "A view counts with the lowest score of N consecutive scored frames.",
            ints=(1, 1000),
        )
        p(
            "best_view.default_timeout_s",
            10.0,
            "Search timeout in seconds when the goal's timeout is 0.",
            floats=(0.01, 86400.0),
        )
        p("pose_frame", "", "TF frame of best-view poses (e.g. world, base_link); empty = no poses. Needs tf2_ros.")
        p("probe_frame", "", "Best-view poses: the probe's TF frame; empty = the image's header.frame_id.")
        for name, (default, descriptor) in parameter_descriptors().items():  # diag_* thresholds, period
            self.declare_parameter(name, default, descriptor)

    def _on_set_parameters(self, params: list[Parameter[Any]]) -> SetParametersResult:
        crop = next((p.value for p in params if p.name == "crop"), None)
        roi = next((p.value for p in params if p.name == "roi"), None)
        for prm in params:
            if prm.name in self.CONFIGURE_TIME and self.engine is not None:
                return SetParametersResult(
                    successful=False,
                    reason=f"{prm.name} is read at configure: change it while unconfigured (deactivate, cleanup first)",
                )
            if prm.name in self.ACTIVATE_TIME and self._running:
                return SetParametersResult(
                    successful=False,
                    reason=f"{prm.name} is read at activate: change it while inactive (deactivate first)",
                )
            if prm.name == "qos_reliability" and prm.value not in ("best_effort", "reliable"):
                return SetParametersResult(successful=False, reason="qos_reliability must be best_effort or reliable")
            if prm.name == "crop" and prm.value not in ("none", "auto", "roi"):
                return SetParametersResult(successful=False, reason="crop must be none, auto or roi")
            if prm.name == "roi" and len(prm.value) != 4:
                return SetParametersResult(successful=False, reason="roi must be [x, y, w, h] with w, h > 0")
        if crop is not None or roi is not None:
            # The crop that results from this change (configured or not) must be usable.
            new_crop = crop if crop is not None else self.param("crop")
            new_roi = tuple(roi if roi is not None else self.param("roi"))
            if new_crop == "roi" and (new_roi[2] <= 0 or new_roi[3] <= 0):
                return SetParametersResult(successful=False, reason="crop=roi needs roi [x, y, w, h] with w, h > 0")
            engine = self.engine
            if engine is not None:
                # One reference assignment: the worker preprocesses with the old config or the new one, never
                # with the new crop and the old roi.
                engine.preprocess_config = replace(engine.preprocess_config, crop=new_crop, roi=new_roi)
        return SetParametersResult(successful=True)

    def param(self, name: str) -> Any:
        return self.get_parameter(name).value

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = EngineConfig(
            model_path=self.param("model_path"),
            model_sha256=self.param("model_sha256"),
            allow_unsafe_pickle=self.param("allow_unsafe_pickle"),
            device=self.param("device"),
            require_device=self.param("require_device"),
            amp=self.param("amp"),
            num_threads=self.param("num_threads"),
            num_interop_threads=self.param("num_interop_threads"),
            backend=self.param("backend"),
            ort_graph_optimization=self.param("ort_graph_optimization"),
            ort_allow_spinning=self.param("ort_allow_spinning"),
            input_size=self.param("input_size"),
            crop=self.param("crop"),
            roi=tuple(self.param("roi")),
        )
        try:
            qos_from(self.param("qos_reliability"), self.param("qos_depth"))
            self._best_view_config = BestViewConfig.from_node(self)
            t0 = time.perf_counter()
            self.engine = Engine(cfg)
            if self.engine.num_grades != len(QualityScore().probabilities):  # float32[5]: consumers rely on 5
                raise EngineError(
                    f"model {self.engine.model_path} has {self.engine.num_grades} grades; "
                    f"QualityScore.probabilities holds exactly {len(QualityScore().probabilities)}"
                )
            self.references = self._load_references(self.engine)
        except (CheckpointError, EngineError, ValueError) as e:  # ReferenceError is a ValueError
            self.get_logger().error(f"configure failed: {e}")
            self.diagnostics.configure_error = str(e)
            self.engine = None
            return TransitionCallbackReturn.FAILURE
        self.diagnostics.configure_error = ""
        self._history = deque(maxlen=int(self.param("reference_history")))
        requested = (cfg.device or "auto").strip().lower()
        if requested != "auto" and requested.split(":")[0] != self.engine.device.type:
            self.get_logger().warning(
                f"device {requested!r} requested but not available: running on {self.engine.device} "
                "(set require_device:=true to fail instead)"
            )
        self.get_logger().info(
            f"model {self.engine.model_id} on {self.engine.device} with {self.engine.backend.describe()} "
            f"(input {self.engine.preprocess_config.input_size} px), ready in {time.perf_counter() - t0:.2f} s "
            f"(warm-up {self.engine.warmup_seconds:.2f} s)"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._best_view_config.enabled:  # created once, accepts goals only while active (as nav2 servers)
            if self._best_view is None:
                self._best_view = BestViewServer(self, self, self._best_view_config, self.aux_group)
            self._best_view.activate()
        # Each entity gets its own profile: the standard QoS override parameters (read-only, declared here on first
        # use: qos_overrides./<resolved topic>.subscription|publisher.reliability|depth|history) are applied to it.
        reliability, depth = self.param("qos_reliability"), self.param("qos_depth")
        overrides = QoSOverridingOptions.with_default_policies()
        diag = self.diagnostics  # incompatible-QoS events are logged with a hint and shown on /diagnostics
        self._pub = pub = self.create_publisher(
            QualityScore,
            self.param("quality_topic"),
            10,
            event_callbacks=diag.publisher_events(self.param("quality_topic")),
            qos_overriding_options=overrides,
        )
        self.debug_image.start(self.param("quality_topic"))
        self._subs = [
            self.create_subscription(
                Image,
                self.param("image_topic"),
                lambda m: self._on_frame(m, False),
                qos_from(reliability, depth),
                callback_group=self.sub_group,
                event_callbacks=diag.subscription_events(self.param("image_topic")),
                qos_overriding_options=overrides,
            )
        ]
        if self.param("compressed_topic"):
            self._subs.append(
                self.create_subscription(
                    CompressedImage,
                    self.param("compressed_topic"),
                    lambda m: self._on_frame(m, True),
                    qos_from(reliability, depth),
                    callback_group=self.sub_group,
                    event_callbacks=diag.subscription_events(self.param("compressed_topic")),
                    qos_overriding_options=overrides,
                )
            )
        with self._lock:
            self.stats = NodeStats()
            self._slot = None
            self._skipped_since_publish = 0
            self._running = True
        self._worker = threading.Thread(target=self._work, name="iqa_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"scoring {', '.join(_describe_qos(s.topic_name, s.qos_profile) for s in self._subs)} -> "
            f"{_describe_qos(pub.topic_name, pub.qos_profile)}"
        )
        return super().on_activate(state)

    def _stop(self) -> None:
        if self._best_view is not None:  # ends running goals first, while scores still flow
            self._best_view.deactivate()
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        with self._lock:
            self._running = False
            self._slot = None
            self._slot_ready.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None
        if self._pub is not None:
            self.destroy_publisher(self._pub)
            self._pub = None
        self.debug_image.stop()

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        if self.engine is not None and self.engine.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Cleanup and shutdown: stop scoring, remove the action server, drop the model and the references."""
        self._stop()
        self._destroy_best_view()
        self.engine = None
        self.references = None
        self._history.clear()
        return TransitionCallbackReturn.SUCCESS

    on_shutdown = on_cleanup

    def destroy_node(self) -> None:
        """Stop the worker and end best-view goals before rclpy destroys the node's entities; then release the
        model here, in a known state, rather than in the interpreter's teardown at exit."""
        self._stop()
        self._destroy_best_view()
        super().destroy_node()
        self.engine = None
        self.references = None

    def _destroy_best_view(self) -> None:
        if self._best_view is not None:
            self._best_view.destroy()
            self._best_view = None

    # ---------------------------------------------------------------- reference views
    def _load_references(self, engine: Engine) -> ReferenceSet:
        """reference_dir -> set (ReferenceError, naming the file, for a corrupt or other-model set)."""
        path = self.param("reference_dir")
        refs = ReferenceSet(engine.model_id, top_k=int(self.param("reference_top_k")))
        if not path:
            return refs
        p = Path(path)
        if not p.exists() or (p.is_dir() and not any(p.iterdir())):
            self.get_logger().info(f"reference_dir {path} is empty: no references yet (teach with capture_reference)")
            return refs
        refs = load_references(
            p,
            engine.model_id,
            engine.embed,
            topic=self.param("reference_topic") or None,
            top_k=int(self.param("reference_top_k")),
        )
        self.get_logger().info(f"{len(refs)} reference views loaded from {path} (calibration d0 {refs.d0:.4g})")
        return refs

    def _on_capture(self, request: Any, response: Any) -> Any:
        engine, refs = self.engine, self.references
        if engine is None or refs is None:
            response.success, response.message = False, "not configured: no model to embed frames with"
            return response
        if request.count < 1:
            response.success, response.message = False, "count must be >= 1"
            response.set_size = len(refs)
            return response
        with self._ref_lock:
            refs = self.references
            if refs is None:  # cleaned up meanwhile
                response.success, response.message = False, "not configured"
                return response
            held = {(f.stamp_ns, f.frame_id) for f in refs.frames}  # a frame is added once, however often asked
            newest = [
                (e, h)
                for e, h in list(self._history)[-int(request.count) :]
                if (Time.from_msg(h.stamp).nanoseconds, h.frame_id) not in held
            ]
            if not newest:
                response.success = False
                response.message = "no new scored frame since the last capture: stream images, then capture"
                response.set_size = len(refs)
                return response
            new = ReferenceSet(refs.model_id, refs.embeddings, list(refs.frames), refs.top_k)
            group = new.next_group()
            frames = [
                ReferenceFrame(Time.from_msg(h.stamp).nanoseconds, h.frame_id, "capture", group) for _, h in newest
            ]
            try:
                new.add(np.stack([e for e, _ in newest]), frames)
            except ReferenceError as e:
                response.success, response.message, response.set_size = False, str(e), len(refs)
                return response
            self.references = new
        response.success, response.added, response.set_size = True, len(newest), len(new)
        response.message = f"added {len(newest)} of {request.count} requested frames; {len(new)} reference views"
        self.get_logger().info(response.message)
        return response

    def _on_clear(self, request: Any, response: Any) -> Any:
        with self._ref_lock:
            if self.references is None:
                response.success, response.message = False, "not configured"
                return response
            n = len(self.references)
            self.references = ReferenceSet(self.references.model_id, top_k=self.references.top_k)
        response.success, response.message = True, f"cleared {n} reference views (saved files are kept)"
        self.get_logger().info(response.message)
        return response

    def _on_save(self, request: Any, response: Any) -> Any:
        path = self.param("reference_dir")
        with self._ref_lock:
            refs = self.references
            if refs is None or not len(refs):
                response.success, response.message = False, "no reference views to save"
                return response
            if not path or is_bag(path):
                response.success = False
                response.message = f"reference_dir must name a folder to save into (is {path!r})"
                return response
            try:
                target = refs.save(path, extra={"node": self.get_fully_qualified_name()})
            except (OSError, ReferenceError) as e:
                response.success, response.message = False, f"save to {path} failed: {e}"
                return response
        response.success, response.message = True, f"saved {len(refs)} reference views to {target}"
        self.get_logger().info(response.message)
        return response

    # ---------------------------------------------------------------- data path
    def add_score_listener(self, listener: ScoreListener) -> None:
        """Register a callback run on the worker thread after each published score. Keep it cheap."""
        self._listeners.append(listener)

    def remove_score_listener(self, listener: ScoreListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def health(self) -> Health:
        """One consistent snapshot for /diagnostics."""
        engine, refs = self.engine, self.references
        state = "active" if self._running else "inactive" if engine is not None else "unconfigured"
        return Health(
            state=state,
            stats=self.stats_snapshot(),
            model_id=engine.model_id if engine is not None else "",
            device=str(engine.device) if engine is not None else "",
            reference_views=len(refs) if refs is not None else 0,
        )

    def stats_snapshot(self) -> NodeStats:
        with self._lock:
            s = self.stats
            return NodeStats(
                s.received,
                s.scored,
                s.skipped,
                Counter(s.errors),
                s.consecutive_failures,
                deque(s.latencies_s),
                Counter(s.warnings),
            )

    def _on_frame(self, msg: Any, compressed: bool) -> None:
        pending = _Pending(msg, compressed, time.perf_counter_ns())
        with self._lock:
            self.stats.received += 1
            if self._slot is not None:
                self.stats.skipped += 1
                self._skipped_since_publish += 1
            self._slot = pending
            self._slot_ready.notify()

    def _tally(self, kind: str, detail: str, scored: bool = False) -> None:
        """Count a refused frame (stats.errors) or a scored but suspicious one (stats.warnings, e.g. a zero
        stamp) and log it, at most once per log_throttle_s for each kind."""
        with self._lock:
            counter = self.stats.warnings if scored else self.stats.errors
            counter[kind] += 1
            count = counter[kind]
        key = f"{'note' if scored else 'error'}:{kind}"
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) >= self.param("log_throttle_s"):
            self._last_log[key] = now
            if scored:
                self.get_logger().warning(f"frame scored but {detail} ({kind}, {count} so far)")
            else:
                self.get_logger().warning(f"frame skipped ({kind}, {count} so far): {detail}")

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._running and self._slot is None:
                    self._slot_ready.wait()
                if not self._running:
                    return
                pending, self._slot = self._slot, None
            if pending is not None:  # always, while running (the wait above); narrows the type
                self._process(pending)

    def _process(self, pending: _Pending) -> None:
        engine = self.engine
        if engine is None:  # cleared only by cleanup, after the worker has stopped
            return
        max_px = self.param("max_pixels")
        try:
            notes = check_header(pending.msg.header)  # raises for an impossible stamp; notes = suspicious but usable
            frame = (
                compressed_to_array(pending.msg, max_px) if pending.compressed else image_to_array(pending.msg, max_px)
            )
            result = engine.score_one(frame)
        except FrameError as e:
            self._tally(e.reason, str(e))
            return
        except Exception as e:  # noqa: BLE001 - a failing frame must never stop the worker
            with self._lock:
                self.stats.consecutive_failures += 1
            self._tally("inference_error", f"{type(e).__name__}: {e}")
            return
        for kind, detail in notes:
            self._tally(kind, detail, scored=True)
        self._publish(pending, result, frame)

    def _publish(self, pending: _Pending, result: FrameScore, frame: np.ndarray) -> None:
        out = QualityScore()
        out.header = pending.msg.header
        out.artifact_score = float(result.score)
        refs = self.references  # one set per frame (services replace it whole)
        if refs is not None and len(refs) and result.embedding is not None:
            out.view_score = float(refs.view_scores(result.embedding)[0])
        else:
            out.view_score = float("nan")
        out.score = combine(out.artifact_score, out.view_score)
        if result.embedding is not None:
            self._history.append((result.embedding, pending.msg.header))
        out.grade = int(result.grade)
        out.probabilities = result.probabilities.tolist()
        out.model_id = self.engine.model_id if self.engine is not None else ""
        with self._lock:
            out.frames_skipped = self._skipped_since_publish
            self._skipped_since_publish = 0
        latency_ns = time.perf_counter_ns() - pending.received_ns
        out.latency = Duration(nanoseconds=latency_ns).to_msg()
        pub = self._pub
        if pub is None:
            return
        try:
            pub.publish(out)
        except Exception as e:  # noqa: BLE001 - the worker must survive; see below
            if not self.context.ok():
                return  # Ctrl-C: rclpy shut the context down before the worker stopped
            self._tally("publish_error", f"{type(e).__name__}: {e}")
            return
        with self._lock:
            self.stats.scored += 1
            self.stats.consecutive_failures = 0
            self.stats.latencies_s.append(latency_ns / 1e9)
        for listener in list(self._listeners):
            try:
                listener(out, pending.msg, frame)
            except Exception as e:  # noqa: BLE001 - a listener bug must not stop scoring
                self._tally("listener_error", f"{type(e).__name__}: {e}")


def main(args: list[str] | None = None) -> int:
    trace_native_crashes()
    shutdown_on_sigint()
    rclpy.init(args=args)
    try:
        node = IqaNode()
    except Exception as e:  # noqa: BLE001 - e.g. a parameter of the wrong type, SROS2 Enforce without an enclave
        if not rclpy.ok():
            return 0  # Ctrl-C while the node was being built
        print(f"[FATAL] iqa_node: cannot create the node: {type(e).__name__}: {e}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        if node.param("autostart"):
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                if not rclpy.ok():
                    return 0  # Ctrl-C during configure
                node.get_logger().fatal("could not configure (see the error above); exiting")
                return 1
            if rclpy.ok():  # not after a Ctrl-C during configure
                node.trigger_activate()
        spin_until_shutdown(executor)
    finally:
        node._stop()  # ends best-view goals while executor threads may still run them; destroy_node repeats it
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
