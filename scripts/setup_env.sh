#!/usr/bin/env bash
# Idempotent set-up of the pip-only ROS 2 environment: `setup_env.sh [kilted|jazzy|humble]` (default kilted)
#   kilted -> .venv        with requirements/ros.txt        (numpy 2, OpenCV 5: `make demo`, `make test`)
#   jazzy  -> .venv-jazzy  with requirements/ros-jazzy.txt  (numpy 1.26, OpenCV 4.6 as on Ubuntu 24.04: `make test-jazzy`)
#   humble -> .venv-humble with requirements/humble.txt     (Python 3.10, numpy 1.21, OpenCV 4.5 as on Ubuntu 22.04, no
#             ROS: `make test-humble`; usiqa_ros is not installed, the Makefile puts it on PYTHONPATH)
# Each: the distro's ROS 2 wheels + torch + the rest, the wheels' CMake path fix, usiqa_msgs built with plain cmake
# and installed into the venv prefix, and usiqa_ros installed editable. USIQA_VENV overrides the venv folder.
# Each step is skipped when its inputs (hashed) have not changed since it last succeeded.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DISTRO=${1:-kilted}
case $DISTRO in
  kilted) ROS_REQ=$ROOT/requirements/ros.txt; VENV=${USIQA_VENV:-$ROOT/.venv} ;;
  jazzy) ROS_REQ=$ROOT/requirements/ros-jazzy.txt; VENV=${USIQA_VENV:-$ROOT/.venv-jazzy} ;;
  humble) ROS_REQ=$ROOT/requirements/humble.txt; VENV=${USIQA_VENV:-$ROOT/.venv-humble} ;;
  *) echo "usage: $0 [kilted|jazzy|humble]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3.11}
if [ "$DISTRO" = humble ] && [ -z "${PYTHON:-}" ]; then
  # pyenv's shim refuses a version that is not its global one: take the interpreter from its versions folder
  PY=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10 2>/dev/null | tail -n 1)
  PY=${PY:-python3.10}
fi
STAMPS=$VENV/.usiqa-stamps
log() { printf '[setup] %s\n' "$*"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
done_already() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
mark() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }
# pip prints a harmless "Location ... is ignored" line per package for this machine's local indexes.
pip_q() { "$VPY" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }

# The torch stack (torch, torchvision, triton, nvidia-*, cuda-*: 5.2 GB for the CUDA build) is the same pin in both
# venvs: hard-link it from the Kilted venv (same file system) so that the second venv adds ~1 GB, not ~6 GB (CI ran
# out of disk installing it twice). pip then finds torch==<pin> installed and adds only its small pure-Python deps.
# Dist-info files are linked last, so a failure part-way (e.g. another file system) leaves pip to install the rest.
share_torch_stack() {
  [ -x "$1/bin/python" ] || return 0
  "$1/bin/python" - "$VPY" "$ROOT/requirements/torch.txt" "$2" <<'PY' || log "could not share the torch stack; pip installs it"
import importlib.metadata as md, os, re, subprocess, sys
pins = dict(line.split("==") for line in open(sys.argv[2]).read().split("\n") if "==" in line and not line.startswith("#"))
if any(md.version(name) != version for name, version in pins.items()):
    sys.exit(0)  # the Kilted venv holds other versions than the pins: nothing to share
dst = subprocess.run([sys.argv[1], "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     check=True, capture_output=True, text=True).stdout.strip()
big = re.compile(sys.argv[3])
n = 0
for dist in md.distributions():
    if not big.match(dist.metadata["Name"].lower()):
        continue
    for f in sorted(dist.files or [], key=lambda f: ".dist-info/" in str(f)):
        src = dist.locate_file(f)
        if str(f).startswith("..") or not os.path.isfile(src):
            continue  # console scripts in bin/ carry the other venv's interpreter; pip writes its own
        target = os.path.join(dst, str(f))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            os.link(src, target)
            n += 1
print(f"[setup] hard-linked {n} files of the torch stack from {sys.prefix}")
PY
}

command -v cmake >/dev/null && command -v g++ >/dev/null || {
  log "installing cmake and g++ (apt)"; apt-get update -qq && apt-get install -y -qq cmake g++ >/dev/null; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
# The venv holds the ROS wheels' package.xml files: colcon must not crawl it when the clone sits in a workspace.
touch "$VENV/COLCON_IGNORE"
VPY=$VENV/bin/python

h=$(hash_of "$ROS_REQ" "$ROOT"/requirements/torch.txt "$ROOT"/requirements/base.txt)
if ! done_already pip "$h"; then
  log "installing Python packages ($([ "$DISTRO" = humble ] && echo "Ubuntu 22.04's" || echo "ROS 2 $DISTRO wheels"), torch, the rest)"
  pip_q -r "$ROS_REQ"
  [ "$DISTRO" = jazzy ] && share_torch_stack "$ROOT/.venv" '^(torch|torchvision|triton|nvidia-.*|cuda-.*)$'
  if [ "$DISTRO" = humble ]; then
    # another Python: only the CUDA libraries (no compiled Python modules) can be shared
    share_torch_stack "$ROOT/.venv" '^(nvidia-.*|cuda-toolkit|cuda-pathfinder)$'
    # torch and base.txt's packages without their pins (not the linters), resolved as rosdep's pip keys would be
    # beside Humble's libraries, then installed without triton (torch.compile's GPU kernels, 0.9 GB for Python 3.10)
    pip_q --dry-run --report "$VENV/resolved.json" -r "$ROOT/requirements/torch.txt" -c "$ROS_REQ" \
      $(grep -v -E '^(#|$|ruff|mypy)' "$ROOT/requirements/base.txt" | sed 's/[=<>].*//')
    "$VPY" - "$VENV/resolved.json" > "$VENV/resolved.txt" <<'PY'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    if item["metadata"]["name"].lower() != "triton":
        print(f'{item["metadata"]["name"]}=={item["metadata"]["version"]}')
PY
    pip_q --no-deps -r "$VENV/resolved.txt"
  else
    pip_q -r "$ROOT/requirements/torch.txt"
    pip_q -r "$ROOT/requirements/base.txt" -c "$ROS_REQ" -c "$ROOT/requirements/torch.txt"
  fi
  # The wheels' CMake exports hold the wheel builder's paths: point them at this interpreter and numpy
  # (numpy 2 keeps its headers in numpy/_core/include, numpy 1 in numpy/core/include).
  "$VPY" - <<'PY'
import pathlib, re, sys, sysconfig, numpy
repl = [(re.compile(r"/opt/python/cp311-cp311/lib/python3\.11/site-packages/numpy/_?core/include"), numpy.get_include()),
        (re.compile(r"/opt/python/cp311-cp311/include/python3\.11"), sysconfig.get_paths()["include"])]
n = 0
for f in (pathlib.Path(sys.prefix) / "share").rglob("*.cmake"):
    s = f.read_text()
    if "/opt/python/cp311-cp311" in s:
        for pattern, path in repl:
            s = pattern.sub(lambda _m, p=path: p, s)
        f.write_text(s)
        n += 1
print(f"[setup] patched {n} cmake files")
PY
  rm -f "$STAMPS/msgs"   # rebuild interfaces against the new packages
  mark pip "$h"
fi

if [ "$DISTRO" = humble ]; then  # no ROS wheels to build the interfaces with; usiqa_ros goes on PYTHONPATH
  log "environment ready: $VENV"
  exit 0
fi

MSGS=$ROOT/usiqa_msgs
h=$(hash_of "$MSGS"/package.xml "$MSGS"/CMakeLists.txt "$MSGS"/msg/*.msg "$MSGS"/action/*.action "$MSGS"/srv/*.srv)
if ! done_already msgs "$h"; then
  log "building usiqa_msgs into the venv prefix"
  B=$VENV/build/usiqa_msgs
  rm -rf "$B"; mkdir -p "$B"
  if ! { cmake -S "$MSGS" -B "$B" -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
           -DPython3_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF > "$B.configure.log" 2>&1 \
         && cmake --build "$B" -j"$(nproc)" > "$B.build.log" 2>&1 \
         && cmake --install "$B" > "$B.install.log" 2>&1; }; then
    log "usiqa_msgs build failed; last lines of the logs in $VENV/build:"
    tail -n 30 "$B".*.log
    exit 1
  fi
  mark msgs "$h"
fi

PKG=$ROOT/usiqa_ros
h=$(hash_of "$PKG"/setup.py "$PKG"/setup.cfg "$PKG"/package.xml)
if ! done_already pkg "$h"; then
  log "installing usiqa_ros (editable)"
  # compat mode = a path entry: the repo root holds a usiqa_ros/ folder (the ROS package) that would otherwise
  # shadow the Python package as a namespace package when Python runs from the root.
  pip_q --no-deps --no-build-isolation --config-settings editable_mode=compat -e "$PKG"
  # ROS 2 puts console scripts in lib/usiqa_ros (for `ros2 run`); link them into bin/ for the pip-only path.
  for f in "$VENV"/lib/usiqa_ros/*; do [ -f "$f" ] && ln -sf "$f" "$VENV/bin/$(basename "$f")"; done
  mark pkg "$h"
fi
log "environment ready: $VENV"
