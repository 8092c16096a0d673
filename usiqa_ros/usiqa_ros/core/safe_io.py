"""Validated paths and atomic writes for everything that writes results (CLIs, benchmarks, tools).

Why: a path from a parameter or a command line should fail early with a message naming it (not deep inside a
writer after minutes of work), must not silently clobber a directory or follow a planted symlink, and a crash
mid-write must never leave a truncated CSV/JSON/bag that looks complete. Writers therefore write a temp file in
the destination directory, fsync it and rename it over the target (atomic on POSIX).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class PathError(ValueError):
    """An unusable input or output path; str() names the path and the problem."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _as_path(path: str | os.PathLike[str]) -> Path:
    s = os.fspath(path)
    if not s or not str(s).strip():
        raise PathError(s, "empty path")
    if "\0" in str(s):
        raise PathError(repr(s), "path contains a NUL byte")
    return Path(s).expanduser()


def check_output_path(
    path: str | os.PathLike[str], *, suffixes: tuple[str, ...] = (), overwrite: bool = True, make_parent: bool = True
) -> Path:
    """Validate a file path to be written. Refuses directories, symlinks (a planted link could redirect the
    write), non-regular files (devices, FIFOs), unexpected suffixes, and existing files when overwrite=False."""
    p = _as_path(path)
    if p.is_symlink():
        raise PathError(p, "is a symbolic link; refusing to write through it")
    if p.exists():
        if p.is_dir():
            raise PathError(p, "is a directory, expected a file path")
        if not p.is_file():
            raise PathError(p, "exists and is not a regular file")
    if suffixes and not any(p.name.lower().endswith(s.lower()) for s in suffixes):
        raise PathError(p, f"expected a file name ending in {' or '.join(suffixes)}")
    if p.exists() and not overwrite:
        raise PathError(p, "already exists (pass --overwrite to replace it)")
    parent = p.parent
    if not parent.exists():
        if not make_parent:
            raise PathError(p, f"directory {parent} does not exist")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PathError(p, f"cannot create directory {parent}: {e.strerror}") from None
    if not parent.is_dir():
        raise PathError(p, f"{parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise PathError(p, f"directory {parent} is not writable")
    return p


def check_input_file(path: str | os.PathLike[str], *, suffixes: tuple[str, ...] = ()) -> Path:
    """Validate a file path to be read: exists, regular file, readable, expected suffix."""
    p = _as_path(path)
    if not p.exists():
        raise PathError(p, "does not exist")
    if not p.is_file():
        raise PathError(p, "is not a regular file")
    if not os.access(p, os.R_OK):
        raise PathError(p, "is not readable (permissions)")
    if suffixes and not any(p.name.lower().endswith(s.lower()) for s in suffixes):
        raise PathError(p, f"expected a file name ending in {' or '.join(suffixes)}")
    return p


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def _temp_beside(path: str | os.PathLike[str]) -> Iterator[tuple[int, str, Path]]:
    """A temp file in the destination directory (same file system, so the final rename is atomic), with the
    permissions a plain open() would give; deleted again if the body raises."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        yield fd, tmp, p
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", encoding: str | None = None, newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temp file next to `path`; on a clean exit fsync and rename it over `path`, on an exception delete
    it (the target keeps its previous content or stays absent)."""
    if mode not in ("w", "wb"):
        raise ValueError("atomic_open supports modes 'w' and 'wb'")
    with _temp_beside(path) as (fd, tmp, p):
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
    """For writers that want a file name (safetensors' save_file): write(tmp_path), then rename over `path`."""
    with _temp_beside(path) as (fd, tmp, p):
        os.close(fd)
        write(tmp)
        os.replace(tmp, p)
    return p


@contextmanager
def atomic_dir(path: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """For writers that make a directory (a rosbag2 bag): yields a path inside a temp directory next to `path`;
    on a clean exit that is renamed to `path` (an existing `path` is removed first only with `replace`), on an
    exception it is deleted."""
    p = Path(path)
    if p.exists() and not replace:
        raise PathError(p, "exists already; not overwriting")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".partial", dir=p.parent))
    try:
        yield tmp / p.name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        os.rename(tmp / p.name, p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)
