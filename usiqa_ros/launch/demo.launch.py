"""The demo of a ROS install: iqa_node scores the bundled sample clip streamed by demo_publisher, and score_printer
prints one line per QualityScore. Runs until Ctrl-C. (`make demo` is the same without `ros2 launch`.)

    ros2 launch usiqa_ros demo.launch.py [rate:=15.0] [frames_dir:=/my/frames] [namespace:=demo]

All arguments of iqa.launch.py (params_file, model_path, device, best_view) apply to the node; the frames are
streamed on `image` in the namespace. If any of the three processes exits with an error, launch exits non-zero.
"""

from __future__ import annotations

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node, PushRosNamespace
from launch_ros.substitutions import FindPackageShare


def _publisher(context: LaunchContext) -> list[Node]:
    params: dict[str, float | str] = {"rate": float(LaunchConfiguration("rate").perform(context))}
    frames_dir = LaunchConfiguration("frames_dir").perform(context)
    if frames_dir:  # empty = demo_publisher's default, the bundled sample clip
        params["frames_dir"] = frames_dir
    return [Node(package="usiqa_ros", executable="demo_publisher", parameters=[params], output="screen")]


def generate_launch_description() -> LaunchDescription:
    iqa = PathJoinSubstitution([FindPackageShare("usiqa_ros"), "launch", "iqa.launch.py"])
    return LaunchDescription(
        [
            DeclareLaunchArgument("namespace", default_value="", description="Namespace of the three nodes"),
            # as in iqa.launch.py: launch's default 5 s from SIGINT to SIGTERM is shorter than torch's teardown
            DeclareLaunchArgument("sigterm_timeout", default_value="30", description="Seconds from SIGINT to SIGTERM"),
            DeclareLaunchArgument("rate", default_value="15.0", description="Frames per second streamed (Hz)"),
            DeclareLaunchArgument("frames_dir", default_value="", description="Folder of frames; empty = bundled"),
            GroupAction(
                [
                    PushRosNamespace(LaunchConfiguration("namespace")),
                    # the node's own namespace argument stays empty: the pushed namespace applies to all three
                    IncludeLaunchDescription(
                        PythonLaunchDescriptionSource(iqa), launch_arguments={"namespace": ""}.items()
                    ),
                    OpaqueFunction(function=_publisher),
                    Node(package="usiqa_ros", executable="score_printer", output="screen"),
                ]
            ),
        ]
    )
