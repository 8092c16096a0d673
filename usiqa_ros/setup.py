"""ament_python package usiqa_ros. Console scripts land in lib/usiqa_ros (ROS 2 convention, for `ros2 run`)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "usiqa_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "benchmarks", "benchmarks.*"]),
    package_data={PACKAGE: ["models/*.safetensors", "models/*.json", "sample_frames/*.png", "sample_frames/*.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="usiqa maintainers",
    maintainer_email="maintainers@usiqa.example.com",
    description="Real-time ultrasound image quality assessment (USQNet) for ROS 2.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            # ROS 2 nodes and clients
            "iqa_node = usiqa_ros.ros.iqa_node:main",
            "demo_publisher = usiqa_ros.nodes.demo_publisher:main",
            "score_printer = usiqa_ros.nodes.score_printer:main",
            "best_view_client = usiqa_ros.ros.best_view_client:main",
            "probe_sim = usiqa_ros.nodes.probe_sim:main",
            # ROS-free tools
            "usiqa-train = usiqa_ros.core.train.cli:main",
            "usiqa-eval = usiqa_ros.core.evaluate:main",
            "usiqa-eval-bag = usiqa_ros.tools.bag_eval:main",
            "usiqa-replay = usiqa_ros.nodes.replay:main",
            "usiqa-make-bag = usiqa_ros.tools.make_bag:main",
        ],
    },
)
