"""Launch the IQA node with its parameter file (ROS 2 Humble or newer).

    ros2 launch usiqa_ros iqa.launch.py image_topic:=/us/image device:=cuda namespace:=probe

Launch arguments override the YAML: image_topic (remapped onto the node's `image` input), params_file,
model_path, device, namespace, and best_view (enables the best-view action server).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

# Launch argument -> node parameter it sets (checked against the node by test/test_launch.py).
PARAMETER_ARGUMENTS = {
    "model_path": ("", "Checkpoint (.safetensors); empty = the bundled default model"),
    "device": ("auto", "auto | cpu | cuda | cuda:N"),
}


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node and its topics"),
        DeclareLaunchArgument("image_topic", default_value="image", description="sensor_msgs/Image topic to score"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("usiqa_ros"), "config", "iqa.yaml"]),
            description="Parameter YAML for iqa_node",
        ),
    ]
    args += [DeclareLaunchArgument(k, default_value=v, description=d) for k, (v, d) in PARAMETER_ARGUMENTS.items()]
    node = Node(
        package="usiqa_ros",
        executable="iqa_node",
        name="iqa_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file")]
        + [{k: ParameterValue(LaunchConfiguration(k), value_type=str)} for k in PARAMETER_ARGUMENTS],
        remappings=[("image", LaunchConfiguration("image_topic"))],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription([*args, node])
