"""Durable writes, shared by every part that writes a file: a new temporary file in the same folder,
flushed, fsynced and moved into place with os.replace (then the folder is fsynced). An existing file
is never opened for writing, because hard links share it with `checkpoints/`."""
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.errors import fault_point


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None], readonly: bool = False) -> None:
    """Write `path` through `write(tmp)` on a new temporary file in the same folder, then
    fsync and os.replace it into place. A crash leaves the old file or the new one, never half."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if readonly:
            os.chmod(tmp, 0o444)
        fault_point("replace")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: Path, text: str, readonly: bool = False) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "x") as f:
            f.write(text)
    atomic_write(path, write, readonly)


def write_json(path: Path, obj: Any, readonly: bool = False) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", readonly)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """Put `src` at `dst` as a hard link (a copy where links are impossible), atomically."""
    if dst.exists() and os.path.samefile(src, dst):
        return  # already there (rename() between two links of one file would do nothing)
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)
