"""Atomic file writes: a file is either complete or absent, never half-written."""
from __future__ import annotations

import os
import os.path as osp
import tempfile
from typing import IO, Any, Callable

import torch

__all__ = ["TMP_PREFIX", "atomic_write", "atomic_torch_save", "remove_stale_temp_files"]

TMP_PREFIX = ".tmp-"


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, then ``os.replace`` it to ``path``.

    ``path`` is never half-written; a process killed mid-write leaves only a ``.tmp-*`` file, which
    :func:`remove_stale_temp_files` clears, and an exception removes it.
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_file_mode())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temp_files(folder: str) -> int:
    """Delete ``.tmp-*`` files left in ``folder`` by a killed :func:`atomic_torch_save`; returns the count."""
    if not osp.isdir(folder):
        return 0
    stale = [n for n in os.listdir(folder) if n.startswith(TMP_PREFIX)]
    for name in stale:
        os.remove(osp.join(folder, name))
    return len(stale)


def _default_file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
