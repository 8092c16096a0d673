"""ROS 2 Humble (Ubuntu 22.04, Python 3.10, rclpy 3.x): the rclpy.qos_event fallback of the diagnostics, and every
tracked Python file compiled by a real Python 3.10, whose standard library must also have every name we import."""

from __future__ import annotations

import ast
import glob
import importlib
import os
import shutil
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest
from conftest import REPO, require


def test_diagnostics_fall_back_to_rclpy_qos_event(ros, monkeypatch: pytest.MonkeyPatch) -> None:
    """With rclpy.event_handler hidden (as on Humble), the callbacks come from rclpy.qos_event and work on a real
    subscription: an incompatible publisher fires incompatible_qos."""
    import rclpy.event_handler as real
    import rclpy.executors
    import rclpy.node  # noqa: F401 - imported before event_handler is hidden (rclpy itself needs it)
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    import usiqa_ros.ros
    import usiqa_ros.ros.diagnostics as current

    monkeypatch.setattr(usiqa_ros.ros, "diagnostics", current)  # restored after the re-import below

    # Humble's rclpy.qos_event defines these classes itself (this rclpy's qos_event only re-exports event_handler).
    humble_qos_event = types.ModuleType("rclpy.qos_event")
    for name in ("SubscriptionEventCallbacks", "PublisherEventCallbacks", "QoSRequestedIncompatibleQoSInfo"):
        setattr(humble_qos_event, name, getattr(real, name))
    monkeypatch.setitem(sys.modules, "rclpy.event_handler", None)  # `import rclpy.event_handler` now raises
    monkeypatch.setitem(sys.modules, "rclpy.qos_event", humble_qos_event)
    monkeypatch.delitem(sys.modules, "usiqa_ros.ros.diagnostics", raising=False)
    with pytest.raises(ImportError):
        importlib.import_module("rclpy.event_handler")
    diagnostics = importlib.import_module("usiqa_ros.ros.diagnostics")
    assert diagnostics.SubscriptionEventCallbacks is humble_qos_event.SubscriptionEventCallbacks
    assert diagnostics.PublisherEventCallbacks is humble_qos_event.PublisherEventCallbacks

    fired = threading.Event()
    node = ros.create_node("humble_compat_check")
    try:
        node.create_subscription(
            Image,
            "humble_compat_image",
            lambda _msg: None,
            QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE),
            event_callbacks=diagnostics.SubscriptionEventCallbacks(incompatible_qos=lambda _info: fired.set()),
        )
        node.create_publisher(
            Image, "humble_compat_image", QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
        )
        executor = rclpy.executors.SingleThreadedExecutor()
        executor.add_node(node)
        for _ in range(200):  # up to ~20 s under load; discovery is usually well under 1 s
            executor.spin_once(timeout_sec=0.1)
            if fired.is_set():
                break
        executor.remove_node(node)
        assert fired.is_set(), "incompatible_qos never fired with the qos_event callbacks"
    finally:
        node.destroy_node()


def test_diagnostics_use_rclpy_event_handler_where_present() -> None:
    import rclpy.event_handler

    from usiqa_ros.ros import diagnostics

    assert diagnostics.SubscriptionEventCallbacks is rclpy.event_handler.SubscriptionEventCallbacks


# ------------------------------------------------------------------ Python 3.10


def _python310() -> str | None:
    """A working python3.10: $USIQA_PYTHON310, PATH, or pyenv's versions (its shim refuses non-global versions)."""
    candidates = [os.environ.get("USIQA_PYTHON310", ""), shutil.which("python3.10") or ""]
    roots = [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv"), *glob.glob("/opt/pyenv*")]
    candidates += sorted(p for r in roots if r for p in glob.glob(f"{r}/versions/3.10*/bin/python3.10"))
    for c in filter(None, candidates):
        ok = subprocess.run([c, "-c", "import sys; assert sys.version_info[:2] == (3, 10)"], capture_output=True)
        if ok.returncode == 0:
            return c
    return None


def _tracked_python_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True)
    if out.returncode == 0 and out.stdout.strip():
        files = [REPO / line for line in out.stdout.splitlines()]
    else:  # not a git checkout (e.g. an exported tarball)
        files = [p for p in REPO.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(REPO).parts)]
    return [f for f in files if f.exists()]


@pytest.fixture(scope="module")
def python310() -> str:
    exe = _python310()
    require(exe is not None, "python3.10 not found (pyenv install 3.10, or set USIQA_PYTHON310)")
    assert exe is not None
    return exe


def test_every_tracked_file_compiles_with_python310(python310: str, tmp_path: Path) -> None:
    files = _tracked_python_files()
    assert len(files) > 50
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(tmp_path))  # no .pyc files in the tree
    out = subprocess.run(
        [python310, "-m", "compileall", "-q", *map(str, files)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def _stdlib_imports(files: list[Path]) -> set[tuple[str, str]]:
    """(module, name) pairs of `import m` / `from m import name` for standard-library modules."""
    pairs = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                pairs |= {(a.name, "") for a in node.names if a.name.split(".")[0] in sys.stdlib_module_names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] in sys.stdlib_module_names and node.module != "__future__":
                    pairs |= {(node.module, a.name) for a in node.names}
    return pairs


CHECK_NAMES = """
import importlib, json, sys
missing = []
for module, name in json.load(sys.stdin):
    try:
        m = importlib.import_module(module)
    except ImportError:
        missing.append(module)
        continue
    if name and name != "*" and not hasattr(m, name):
        try:
            importlib.import_module(f"{module}.{name}")
        except ImportError:
            missing.append(f"{module}.{name}")
print("\\n".join(missing))
"""


def test_python310_stdlib_has_every_imported_name(python310: str) -> None:
    """compileall checks syntax only; tomllib, typing.Self or datetime.UTC would still break on Humble."""
    import json

    pairs = sorted(_stdlib_imports(_tracked_python_files()))
    assert ("typing", "TYPE_CHECKING") in pairs or len(pairs) > 20
    out = subprocess.run(
        [python310, "-c", CHECK_NAMES], input=json.dumps(pairs), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [], f"not in Python 3.10's standard library: {out.stdout.split()}"
    # the check itself sees 3.11-only names
    bad = subprocess.run(
        [python310, "-c", CHECK_NAMES],
        input=json.dumps([["tomllib", ""], ["typing", "Self"], ["datetime", "UTC"], ["typing", "Optional"]]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.stdout.split() == ["tomllib", "typing.Self", "datetime.UTC"]
