"""Atomic writes of files and folders, one writer at a time, with the litter of dead writers cleaned up.

A file or folder `DEST` is written into a temporary sibling `.DEST.tmp-XXXXXXXX` (an exclusive `flock` is held
on it for as long as its writer lives) and moved into place only when complete: a folder by an atomic exchange
with the old one (`renameat2(RENAME_EXCHANGE)`; where the filesystem lacks it, the old one is first renamed to
`.DEST.old-XXXXXXXX`), a file by `rename`. Readers see the old or the new artefact, never a part of one.

Before a write starts, under a short lock of the parent folder, every sibling temporary of DEST is examined: one
whose lock can be taken belongs to a dead writer (killed, power loss) and is removed (a `.old-` folder is moved
back to DEST when DEST is missing: the old artefact survives a crash in the middle of the swap); one whose lock
is held belongs to a live writer, and the new write is refused (`wait=False`, outputs the user named) or waits
for it (`wait=True`, caches two runs build at once).

A full disk (ENOSPC, EDQUOT) during a write is a UserError naming the path, the space needed and the space free;
the temporary is removed and DEST keeps its old contents.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import UserError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError with ENOSPC / EDQUOT, or a library error that wraps one (safetensors' Rust I/O)."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True
    return any(t in str(exc) for t in _DISK_FULL_TEXT)


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def disk_full_error(destination: Path, needed: int | None, written: int) -> UserError:
    try:
        free = shutil.disk_usage(destination.parent).free
    except OSError:
        free = 0
    need = f"about {_mb(needed)}" if needed and needed > written else f"more than {_mb(written)}"
    return UserError(f"The disk is full: writing {destination} needs {need} and its filesystem has {_mb(free)} "
                     "free. Nothing was written (what was there before is unchanged).",
                     "Free space on that filesystem, or write to another one (another output path, or "
                     "EDGEAWQ_CACHE=DIR for the caches).")


def check_free_space(destination: Path, needed: int) -> None:
    """Refuse before any work when the filesystem of `destination` has less than `needed` bytes free."""
    parent = Path(destination).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if shutil.disk_usage(parent).free < needed:
        raise disk_full_error(Path(destination).absolute(), needed, 0)


def _temp_pattern(name: str) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(name)}\.(tmp|old)-[A-Za-z0-9_]{{8}}$")


def _open_lockable(path: Path) -> int:
    return os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0) | os.O_NOFOLLOW)


@contextmanager
def _parent_lock(parent: Path) -> Iterator[None]:
    """A short exclusive lock of the parent folder: claiming, cleaning and swapping happen under it."""
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _claim(destination: Path, wait: bool, directory: bool) -> tuple[Path, int]:
    """Clean up dead writers' temporaries of `destination`, then create and lock a new temporary."""
    parent, pattern = destination.parent, _temp_pattern(destination.name)
    while True:
        busy = None
        with _parent_lock(parent):
            for sibling in sorted(parent.iterdir()):
                match = pattern.match(sibling.name)
                if not match:
                    continue
                try:
                    fd = _open_lockable(sibling)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    busy = (sibling, fd)
                    break
                if match.group(1) == "old" and not os.path.lexists(destination):
                    os.rename(sibling, destination)          # a crash between the two renames of a swap
                else:
                    _remove(sibling)
                os.close(fd)
            if busy is None:
                prefix, tmp = f".{destination.name}.tmp-", None
                try:
                    if directory:
                        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
                    else:
                        fd, name = tempfile.mkstemp(prefix=prefix, dir=parent)
                        os.close(fd)
                        tmp = Path(name)
                    lock = _open_lockable(tmp)
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    return tmp, lock
                except BaseException:                        # e.g. Ctrl-C right here: leave nothing behind
                    if tmp is not None:
                        _remove(tmp)
                    raise
        sibling, fd = busy
        if not wait:
            os.close(fd)
            raise UserError(f"Another run is writing {destination} right now (its temporary {sibling.name} is in "
                            "use).", "Wait for it to finish, or write to another path.")
        fcntl.flock(fd, fcntl.LOCK_EX)                          # the other writer's end
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system or filesystem cannot."""
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    for p in files:
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(tmp: Path, destination: Path, directory: bool) -> None:
    """Move the complete temporary into place (under the parent lock)."""
    with _parent_lock(destination.parent):
        if directory and os.path.lexists(destination):
            if _exchange(tmp, destination):
                _remove(tmp)                                     # now the old artefact
            else:
                old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
                old.rmdir()
                os.replace(destination, old)
                os.replace(tmp, destination)
                _remove(old)
        else:
            os.replace(tmp, destination)
        _fsync_dir(destination.parent)


@contextmanager
def _atomic(destination: str | Path, directory: bool, expected_bytes: int | None, wait: bool) -> Iterator[Path]:
    destination = Path(destination).absolute()
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(destination, expected_bytes, 0) from None
        raise UserError(f"Cannot create the folder {destination.parent} ({exc.strerror or exc}).",
                        "Choose an output path in a folder you can write to.") from None
    if expected_bytes:
        check_free_space(destination, expected_bytes)
    tmp, lock = _claim(destination, wait, directory)
    try:
        if directory:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; an output folder gets the usual permissions
        yield tmp
        _fsync_tree(tmp)
        _install(tmp, destination, directory)
    except BaseException as exc:
        written = _size_of(tmp) if os.path.lexists(tmp) else 0
        _remove(tmp)
        if is_disk_full(exc):
            raise disk_full_error(destination, expected_bytes, written) from None
        raise
    finally:
        os.close(lock)


def atomic_directory(destination: str | Path, expected_bytes: int | None = None,
                     wait: bool = False) -> "contextmanager[Path]":
    """Yield a new temporary sibling folder; when the block ends without error it replaces `destination`, else it
    is removed. `expected_bytes`: refuse at once when the filesystem has less free; `wait`: wait for another live
    writer of `destination` instead of refusing."""
    return _atomic(destination, True, expected_bytes, wait)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` so readers see either the old or the new file, never a partial one."""
    with _atomic(path, False, len(data), False) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
