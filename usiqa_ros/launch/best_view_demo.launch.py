"""Closed-loop best-view demo of a ROS install: probe_sim sweeps the phantom, iqa_node scores every frame, and
best_view_client runs one search over one sweep, prints the result, sends the probe back to the best view's pose
(TF) and prints the score there; launch then ends (exit code 0 when the search ended with REACHED_TARGET or
TIMEOUT and the probe got back, non-zero otherwise). `make demo-best-view` adds the ground truth.

    ros2 launch usiqa_ros best_view_demo.launch.py [period:=12.0] [rate:=15.0] [target:=0.0] [namespace:=bv]

All arguments of iqa.launch.py (params_file, model_path, device) apply to the node.
"""

from __future__ import annotations

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription, RegisterEventHandler, Shutdown
from launch.event_handlers import OnProcessExit
from launch.events.process import ProcessExited
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node, PushRosNamespace
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


class SearchFailed(RuntimeError):
    """Raised when the client fails: launch logs it, shuts down and exits with code 1."""


def _client_done(event: ProcessExited, context: LaunchContext) -> list[Shutdown]:
    if event.returncode != 0:
        raise SearchFailed(f"best_view_client exited with code {event.returncode} (its message is above)")
    return [Shutdown(reason="best-view search finished")]


def generate_launch_description() -> LaunchDescription:
    iqa = PathJoinSubstitution([FindPackageShare("usiqa_ros"), "launch", "iqa.launch.py"])
    period = LaunchConfiguration("period")
    client = Node(
        package="usiqa_ros",
        executable="best_view_client",
        # the search lasts one sweep; the server appears once the node has loaded its model
        # then it sends the simulated probe back to best_pose (TF: probe_sim broadcasts world -> probe) and prints
        # the score there next to the best score
        arguments=[
            "--timeout",
            period,
            "--target",
            LaunchConfiguration("target"),
            "--server-timeout",
            "300",
            "--return-to",
            "probe_pose",
        ],  # fmt: skip
        output="screen",
    )
    sim_params = {
        "rate": ParameterValue(LaunchConfiguration("rate"), value_type=float),
        "sweep_period_s": ParameterValue(period, value_type=float),
    }
    return LaunchDescription(
        [
            DeclareLaunchArgument("namespace", default_value="", description="Namespace of the three nodes"),
            # as in iqa.launch.py: launch's default 5 s from SIGINT to SIGTERM is shorter than torch's teardown
            DeclareLaunchArgument("sigterm_timeout", default_value="30", description="Seconds from SIGINT to SIGTERM"),
            DeclareLaunchArgument("period", default_value="12.0", description="Seconds per sweep = search time"),
            DeclareLaunchArgument("rate", default_value="15.0", description="probe_sim frame rate (Hz)"),
            DeclareLaunchArgument("target", default_value="0.0", description="Stop early at this score; 0 = never"),
            GroupAction(
                [
                    PushRosNamespace(LaunchConfiguration("namespace")),
                    IncludeLaunchDescription(
                        PythonLaunchDescriptionSource(iqa),
                        launch_arguments={"namespace": "", "best_view": "true", "pose_frame": "world"}.items(),
                    ),
                    Node(package="usiqa_ros", executable="probe_sim", parameters=[sim_params], output="screen"),
                    client,
                    RegisterEventHandler(OnProcessExit(target_action=client, on_exit=_client_done)),
                ]
            ),
        ]
    )
