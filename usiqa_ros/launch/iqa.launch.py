"""Launch the IQA node with its parameter file (ROS 2 Humble or newer).

    ros2 launch usiqa_ros iqa.launch.py image_topic:=/us/image device:=cuda namespace:=probe
    ros2 launch usiqa_ros iqa.launch.py params_file:=my.yaml          # my.yaml's model_path and device are used

Arguments: namespace, params_file (default: the package's config/iqa.yaml), and overrides that are applied on
top of the params file only when given (empty = keep the file's value): image_topic, model_path, device,
best_view (true | false: offer the best-view action), pose_frame (TF frame of the best view's pose). `ros2 launch usiqa_ros iqa.launch.py --show-args` lists them.

If iqa_node exits with an error (e.g. its model fails to load at configure), launch shuts down and exits non-zero;
the node's own message is the last error it printed above.
"""

from __future__ import annotations

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events.process import ProcessExited
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# Launch argument -> (node parameter it overrides, description). Empty = the params file's value (checked
# against the node's declared parameters by test/test_package.py and for real by test/test_ros_cli.py).
OVERRIDES = {
    "image_topic": ("image_topic", "sensor_msgs/Image topic to score; empty = the params file's (default: image)"),
    "model_path": ("model_path", "Checkpoint (.safetensors); empty = the params file's (default: the bundled model)"),
    "device": ("device", "auto | cpu | cuda | cuda:N; empty = the params file's (default: auto)"),
    "best_view": ("best_view.enabled", "true | false: offer the BestViewSearch action; empty = the params file's"),
    "pose_frame": ("pose_frame", "TF frame of the best view's pose (e.g. world); empty = the params file's (no poses)"),
}
BOOLEANS = {"true": True, "false": False}


class NodeFailed(RuntimeError):
    """Raised from the exit handler: launch logs it, shuts everything down and exits with code 1."""


def _overrides(context: LaunchContext) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for arg, (param, _) in OVERRIDES.items():
        value = LaunchConfiguration(arg).perform(context).strip()
        if not value:
            continue
        if param == "best_view.enabled":
            if value.lower() not in BOOLEANS:
                raise ValueError(f"best_view must be true or false, not {value!r}")
            out[param] = BOOLEANS[value.lower()]
        else:
            out[param] = value
    return out


def _node(context: LaunchContext) -> list[Node]:
    overrides = _overrides(context)
    params: list = [LaunchConfiguration("params_file").perform(context)]
    if overrides:  # after the file, so they win; absent arguments leave the file's values alone
        params.append(overrides)
    return [
        Node(
            package="usiqa_ros",
            executable="iqa_node",
            name="iqa_node",
            namespace=LaunchConfiguration("namespace"),
            parameters=params,
            output="screen",
            emulate_tty=True,
            sigterm_timeout=LaunchConfiguration("sigterm_timeout"),
        )
    ]


def fail_on_error_exit(event: ProcessExited, context: LaunchContext) -> None:
    """A process that exits with an error ends the launch with a non-zero code (launch alone would go on and exit 0).

    Signal exits during a requested shutdown (Ctrl-C, SIGTERM escalation) are left to launch's own reporting."""
    if event.returncode not in (0, None) and not (event.returncode < 0 and context.is_shutdown):
        raise NodeFailed(f"{event.action.name} exited with code {event.returncode} (its error is above)")


def arguments() -> list[DeclareLaunchArgument]:
    """The launch arguments of this file (included by demo.launch.py and best_view_demo.launch.py)."""
    return [
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node and its topics"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("usiqa_ros"), "config", "iqa.yaml"]),
            description="Parameter YAML for iqa_node",
        ),
        *[DeclareLaunchArgument(k, default_value="", description=d) for k, (_, d) in OVERRIDES.items()],
        # launch sends SIGTERM this long after SIGINT (its default: 5 s). After Ctrl-C the node stops its worker,
        # shuts rclpy down and exits; the interpreter's teardown of torch alone takes 2-3 s on a loaded 2-core machine.
        DeclareLaunchArgument("sigterm_timeout", default_value="30", description="Seconds from SIGINT to SIGTERM"),
    ]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            *arguments(),
            RegisterEventHandler(OnProcessExit(on_exit=fail_on_error_exit)),
            OpaqueFunction(function=_node),
        ]
    )
