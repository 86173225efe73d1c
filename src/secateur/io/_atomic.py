"""Write a directory or a file so that readers see the old content or the complete new one, never a mix."""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_dir", "atomic_file", "remove"]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


@functools.cache
def _file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (0o644 under the usual 022)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _publish(path: Path) -> None:
    """Give a written file the usual mode and sync it. Some writers (safetensors' ``save_file``)
    create 0o600 files, which other users of a shared machine could not read."""
    os.chmod(path, _file_mode())
    _fsync(path)


def remove(path: Path) -> None:
    """Delete a file, a link or a folder tree (only ever what secateur wrote)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _sibling(target: Path, suffix: str) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.{suffix}")


@contextmanager
def atomic_dir(target: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``target``; on success, move it to ``target``.

    If the body raises, the temporary directory is removed and ``target`` is untouched. An existing
    ``target`` is replaced (only if ``overwrite``) after the new content is completely written and
    synced: it is renamed aside, the new directory renamed into place, then the old one deleted.
    """
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                _publish(child)
            else:
                _fsync(child)
        _fsync(tmp)
        _swap(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(target.parent)


def _swap(new: Path, target: Path) -> None:
    if not os.path.lexists(target):
        os.replace(new, target)
        return
    old = _sibling(target, "old")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    remove(old)


@contextmanager
def atomic_file(target: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary file path next to ``target``; on success, rename it to ``target``.

    The body writes the file at the yielded path. If it raises, that file is removed and ``target``
    is untouched; otherwise the file is synced and renamed over ``target`` (only if ``overwrite``
    when ``target`` exists). Raises ``FileExistsError`` or ``IsADirectoryError`` before the body runs.
    """
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory; pass a file path")
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    try:
        yield tmp
        _publish(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(target.parent)
