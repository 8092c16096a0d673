"""A test peer node that talks to an iqa_node only through ROS: lifecycle and parameter services, /rosout,
/diagnostics, the image and quality topics (used by the reliability suites)."""

from __future__ import annotations

from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Log
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_helpers import wait_for
from sensor_msgs.msg import Image
from usiqa_msgs.msg import QualityScore

from usiqa_ros.ros.diagnostics import status_values

TRANSITIONS = {
    "configure": Transition.TRANSITION_CONFIGURE,
    "activate": Transition.TRANSITION_ACTIVATE,
    "deactivate": Transition.TRANSITION_DEACTIVATE,
    "cleanup": Transition.TRANSITION_CLEANUP,
}


class Peer(Node):
    """Drives and observes one iqa_node named `target` (no Python references to the node needed)."""

    def __init__(self, target: str, ns: str | None = None, image_qos: Any = 10) -> None:
        super().__init__(f"peer_{target}")
        self.target = target
        self.logs: list[Log] = []
        self.diag: list[DiagnosticStatus] = []
        self.scores: list[QualityScore] = []
        rosout_qos = QoSProfile(
            depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self.create_subscription(Log, "/rosout", lambda m: m.name == target and self.logs.append(m), rosout_qos)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.change = self.create_client(ChangeState, f"/{target}/change_state")
        self.get = self.create_client(GetState, f"/{target}/get_state")
        self.set_params = self.create_client(SetParameters, f"/{target}/set_parameters")
        self.image_pub = None
        if ns is not None:
            self.image_pub = self.create_publisher(Image, f"/{ns}/image", image_qos)
            self.create_subscription(QualityScore, f"/{ns}/quality", self.scores.append, 100)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        self.diag.extend(s for s in msg.status if s.name == f"{self.target}: image quality")

    def _call(self, client, request, timeout: float = 60.0, attempts: int = 1):
        """One service call. Idempotent requests may pass attempts > 1: right after discovery a DDS server can
        drop the response to a client whose response reader it has not matched yet, so the request is resent."""
        assert client.wait_for_service(timeout_sec=15.0), f"service {client.srv_name} not available"
        for attempt in range(attempts):
            future = client.call_async(request)
            try:
                wait_for(future.done, timeout / attempts)
                return future.result()
            except TimeoutError:
                client.remove_pending_request(future)
                if attempt == attempts - 1:
                    raise

    def transition(self, name: str) -> bool:
        req = ChangeState.Request()
        req.transition.id = TRANSITIONS[name]
        return self._call(self.change, req).success

    def state(self) -> str:
        return self._call(self.get, GetState.Request(), attempts=6).current_state.label

    def set_param(self, name: str, value: Any) -> tuple[bool, str]:
        req = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        result = self._call(self.set_params, req).results[0]
        return result.successful, result.reason

    def errors(self) -> list[str]:
        return [m.msg for m in self.logs if m.level >= Log.ERROR]

    def warnings(self) -> list[str]:
        return [m.msg for m in self.logs if m.level == Log.WARN]

    def latest_diag(self) -> dict[str, str]:
        return status_values(self.diag[-1]) if self.diag else {}

    def diag_level(self) -> int:
        return self.diag[-1].level[0] if self.diag else -1
