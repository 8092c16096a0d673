# The README's two commands: `make demo` and `make test`. Both set up .venv first (idempotent, skipped when
# nothing changed): ROS 2 Kilted wheels, torch, the interface package usiqa_msgs, usiqa_ros (editable).
PY := $(CURDIR)/.venv/bin/python

.PHONY: setup demo demo-best-view test lint bench clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) -m usiqa_ros.nodes.demo

demo-best-view: setup  # probe_sim sweeps, iqa_node scores, best_view_client searches; result vs ground truth
	$(PY) -m usiqa_ros.nodes.best_view_demo

test: setup
	$(PY) -m ruff check .
	cd usiqa_ros && $(PY) -m pytest  # from the package folder: pytest.ini and test/ live there

bench: setup
	$(PY) -m benchmarks.run

clean:
	rm -rf .venv .pytest_cache .ruff_cache
