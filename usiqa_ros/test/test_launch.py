"""Launch and packaging facts a ROS user runs into (issue 12), checked statically, so they hold in a bare clone
too; test_ros_cli.py runs the same launch files for real with `ros2 launch` when the ROS underlay is there."""

from __future__ import annotations

import ast
import re

from conftest import PKG, REPO

LAUNCH = PKG / "launch"


def _setup_keywords() -> set[str]:
    tree = ast.parse((PKG / "setup.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"]
    assert len(calls) == 1
    return {k.arg for k in calls[0].keywords if k.arg}


def test_setup_py_has_no_tests_require():
    """setuptools warns "Unknown distribution option: 'tests_require'" on every colcon build otherwise."""
    keywords = _setup_keywords()
    assert "entry_points" in keywords and "tests_require" not in keywords


def test_package_xml_exec_depends_on_the_launch_verb():
    from catkin_pkg.package import parse_package

    deps = {d.name for d in parse_package(PKG / "package.xml").exec_depends}
    assert {"launch", "launch_ros", "ros2launch"} <= deps


def test_launch_files_compile_and_are_installed():
    files = sorted(p.name for p in LAUNCH.glob("*.launch.py"))
    assert files == ["best_view_demo.launch.py", "demo.launch.py", "iqa.launch.py"]
    for name in files:
        tree = ast.parse((LAUNCH / name).read_text())
        compile(tree, name, "exec")
        assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    assert 'glob("launch/*.launch.py")' in (PKG / "setup.py").read_text()


def test_demo_launch_files_include_iqa_launch():
    """The demos start the node through iqa.launch.py, so its arguments (params_file, model_path, ...) apply."""
    for name in ("demo.launch.py", "best_view_demo.launch.py"):
        src = (LAUNCH / name).read_text()
        assert '"iqa.launch.py"' in src and "IncludeLaunchDescription" in src, name
        assert "PushRosNamespace" in src, name


def test_readme_says_what_to_do_about_pep_668():
    """Ubuntu 24.04 refuses a system-wide `pip install` (PEP 668): the install section says what to do instead and
    no longer tells a ROS user to pip-install the venv's pins system-wide."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Install on a ROS 2", 1)[1].split("\n## ", 1)[0]
    assert "PEP 668" in section and "externally-managed-environment" in section
    commands = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert not any(re.search(r"^\s*(sudo )?pip3? install -r", c, re.M) for c in commands), commands
