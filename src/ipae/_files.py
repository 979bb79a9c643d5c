"""Files that appear whole or not at all: atomic writes, staged output directories, the temporaries of
killed processes (told by process liveness) and an atomic directory swap (renameat2's RENAME_EXCHANGE).
Internal: the training loop, the checkpoints and the experiments write through it."""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

__all__: list[str] = []  # internal


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it to `path`.

    A reader never sees a half-written file, and a failure leaves no file behind; the temporaries of
    `path` that killed processes left are removed (`remove_stale`).
    """
    path = Path(path)
    remove_stale(path)
    tmp = _fresh(path, lambda name: os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fresh(path: Path, create: Callable[[Path], None]) -> Path:
    """A new hidden name beside `path`, `.NAME.PID-START.TOKEN.tmp`, made by `create` (which fails if it
    exists). PID and START (its start time, `_start_time`) name the owner, so that `remove_stale` can tell
    a temporary of a killed process from one in use. Unlike mkstemp and mkdtemp, which make private files,
    `create` gives the usual permissions (the umask applies), and nothing process-wide is changed to do so."""
    for _ in range(100):
        candidate = _temporary_name(path)
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not make a temporary name beside {path}")


def _temporary_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}-{_start_time(os.getpid()) or 0}.{secrets.token_hex(4)}.tmp"


def _start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux /proc); None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after "pid (command)"
        return int(fields[19])  # field 22 of proc(5)
    except (OSError, IndexError, ValueError):
        return None


def _owner_alive(pid: int, start: int) -> bool:
    """Whether the process that made a temporary still runs: `pid` exists, is not a zombie, and (where
    /proc tells, and `start` was recorded) started at `start`, so that a reused pid is not taken for it.
    Without /proc a reused pid keeps a stale temporary until that process ends too."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    now = _start_time(pid)
    return not (start and now is not None and now != start)


def remove_stale(path: str | Path) -> list[Path]:
    """Remove the temporaries beside `path` (staging directories and half-written files, see `_fresh`)
    whose owner process is gone: what a killed run leaves. Those of running processes, and any other
    name, are left alone. Returns what was removed. Owners are told by process id on this machine: a
    directory shared with another machine or container may hold temporaries that look stale here."""
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        owner = _TEMPORARY.fullmatch(entry.name[len(prefix) :]) if entry.name.startswith(prefix) else None
        if owner is None or _owner_alive(int(owner["pid"]), int(owner["start"])):
            continue
        stale = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


_TEMPORARY = re.compile(r"(?P<pid>\d+)-(?P<start>\d+)\.[0-9a-f]{8}\.tmp")


def write_json(path: str | Path, value: object) -> None:
    """Write `value` as indented JSON, atomically; non-finite floats become null."""
    text = json.dumps(_finite_or_none(value), indent=2) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def _finite_or_none(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


@contextmanager
def json_lines(*paths: Path | None) -> Iterator[Callable[[dict], None]]:
    """A function that appends each record it is given, as one JSON line, to every file of `paths`
    (None: skipped), flushed at once so that the log can be read while it grows."""
    with ExitStack() as stack:
        files = [stack.enter_context(open(path, "w")) for path in paths if path is not None]

        def write(record: dict) -> None:
            line = json.dumps(_finite_or_none(record)) + "\n"
            for file in files:
                file.write(line)
                file.flush()

        yield write


@contextmanager
def staged_directory(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes `out` only when the block succeeds.

    An existing `out` is an error unless `overwrite`; then it is replaced, as a whole, at the end (in
    one step on Linux). Missing parents are created. On failure nothing is left: not `out`, not the
    temporary directory, not the parents this call created. A process killed meanwhile leaves its
    temporary directory (.NAME.PID-START.TOKEN.tmp): the next staging of `out` removes it.
    """
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    created = [parent for parent in reversed(out.parents) if not parent.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)  # the staging directories of killed runs
    stage = _fresh(out, lambda name: os.mkdir(name, 0o777))
    try:
        yield stage
        _put_in_place(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for parent in reversed(created):
            parent.rmdir()
        raise


def _put_in_place(stage: Path, out: Path) -> None:
    """Move the directory `stage` to `out`, replacing what is there in one step where the system can
    swap two paths (Linux); elsewhere `out` is missing for the moment between two renames."""
    if not os.path.lexists(out):
        os.replace(stage, out)
        return
    if _exchange(stage, out):
        old = stage
    else:
        old = _temporary_name(out)
        os.replace(out, old)
        os.replace(stage, out)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)  # a kill here leaves a stale temporary: `remove_stale` takes it
    else:
        old.unlink(missing_ok=True)


def _find_renameat2():
    """The C library's renameat2, or None (not glibc >= 2.28, or not Linux). Looked up once, at import:
    opening the running process's own symbols changes nothing in it."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_RENAMEAT2 = _find_renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (renameat2 with RENAME_EXCHANGE); False where there is no such call."""
    if _RENAMEAT2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if _RENAMEAT2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # a kernel or file system without it
        return False
    raise OSError(error, os.strerror(error), str(b))
