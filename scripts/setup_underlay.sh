#!/usr/bin/env bash
# Idempotent build of the ROS test underlay in .venv/underlay/install: the upstream launch, launch_ros, ros2launch,
# ros2cli (+ verbs) and tf2/tf2_ros_py sources kept in ../shared/ros-underlay (a test fixture; a ROS install
# provides these packages), built with colcon on top of the pip-only venv of scripts/setup_env.sh (run that first).
# Skipped (exit 0) when the fixture is absent; rebuilt only when the tarballs, the pins or the venv change.
# Then: `source .venv/underlay/install/setup.bash` gives `ros2`, `ros2 launch`, `import launch`, `import tf2_ros`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${USIQA_VENV:-$ROOT/.venv}
SRC=${USIQA_ROS_UNDERLAY:-$ROOT/../shared/ros-underlay}
UL=$VENV/underlay
STAMPS=$VENV/.usiqa-stamps
log() { printf '[underlay] %s\n' "$*"; }
pip_q() { "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }

TARS=("$SRC/ros2-launch-cli-src.tar.gz" "$SRC/geometry2-tf2-src.tar.gz")
for t in "${TARS[@]}"; do
  if [ ! -f "$t" ]; then
    log "no ROS underlay sources ($t missing): skipped; the ROS CLI tests will skip (set USIQA_ROS_UNDERLAY)"
    exit 0
  fi
done
[ -x "$VENV/bin/python" ] || { log "no venv at $VENV: run scripts/setup_env.sh first"; exit 1; }

# One build at a time (several shells may run `make test` at once on one venv).
exec 9>"$VENV/.usiqa-underlay.lock"
flock 9
# Inputs: both tarballs, the pins, this script and the ROS wheels installed in the venv (the underlay is built
# against them; other requirement changes do not rebuild it).
ros_wheels() { "$VENV/bin/python" -m pip freeze 2>/dev/null | grep -iE '^ros-(rclpy|rcl|rmw|rcutils|rosidl-runtime-c)==' || true; }
h=$( { cat "${TARS[@]}" "$ROOT/requirements/underlay.txt" "$0"; ros_wheels; } | sha256sum | cut -c1-16)
if [ -f "$STAMPS/underlay" ] && [ "$(cat "$STAMPS/underlay")" = "$h" ] && [ -f "$UL/install/setup.bash" ]; then
  exit 0
fi

log "installing colcon and the tf2 CMake wheels (requirements/underlay.txt)"
pip_q -r "$ROOT/requirements/underlay.txt" -c "$ROOT/requirements/ros.txt"

# launch_testing (a test dependency of ros2cli) is skipped: its pytest11 plugin breaks pytest >= 8 once sourced.
log "building launch, ros2cli and tf2_ros_py into $UL/install (about 30-60 s)"
rm -rf "$UL"
mkdir -p "$UL/ext"
for t in "${TARS[@]}"; do tar -xzf "$t" -C "$UL/ext"; done
export VIRTUAL_ENV=$VENV PATH=$VENV/bin:$PATH
export AMENT_PREFIX_PATH=$VENV      # what sourcing /opt/ros/<distro>/setup.bash would give
export MAKEFLAGS=-j2 PYTHONWARNINGS=ignore
unset COLCON_PREFIX_PATH CMAKE_PREFIX_PATH
if ! (cd "$UL" && "$VENV/bin/colcon" build --base-paths "$UL/ext" --build-base "$UL/build" \
        --install-base "$UL/install" --parallel-workers 2 --event-handlers console_cohesion- summary+ \
        --packages-up-to ros2launch ros2run ros2pkg ros2node ros2topic ros2service ros2lifecycle ros2param \
          ros2action ros2interface tf2_ros_py \
        --packages-ignore launch_testing launch_testing_ros \
        --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VENV/bin/python" > "$UL/build.log" 2>&1); then
  log "colcon build failed; last lines of $UL/build.log:"
  tail -n 40 "$UL/build.log"
  exit 1
fi
tail -n 3 "$UL/build.log" | sed 's/^/[underlay] /'
mkdir -p "$STAMPS"; echo "$h" > "$STAMPS/underlay"
log "underlay ready: source $UL/install/setup.bash"
