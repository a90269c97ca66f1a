"""The output guard: every command that writes asks here first.

Rules, the same for every command:
- an output is never one of the command's inputs (same resolved path or same inode);
- nothing that adapt did not write is deleted or replaced; what it did write (a run's
  files, an export's files) is replaced only when the user asks (`--overwrite`,
  `--resume`);
- one writer at a time: an exclusive lock on the output, taken before any work, makes
  a second writer fail at once instead of mixing files.
Files themselves are written atomically (adapt.checkpoint.atomic_path).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from adapt.errors import AdaptError, term


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def same_path(a: str | Path, b: str | Path) -> bool:
    """Whether a and b name the same file: same resolved path, or same inode (hard links)."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    if a.resolve() == b.resolve():
        return True
    ia = _identity(a)
    return ia is not None and ia == _identity(b)


def refuse_inputs(out: str | Path, inputs: Iterable[str | Path | None], option: str = "out") -> None:
    """Refuse an output that is one of the inputs (`option`: the output's option name, for the message)."""
    for given in inputs:
        if given is not None and same_path(out, given):
            raise AdaptError(f"{term(option)} {out} is one of the inputs ({given}); choose another output")


def _existing_ancestor(path: Path) -> Path:
    """The nearest folder above `path` that exists (where a new output would be created)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


@contextlib.contextmanager
def exclusive_lock(target: str | Path) -> Iterator[None]:
    """Hold an exclusive lock for writing `target` (a file or a folder) while the block runs.

    The lock is a file `.NAME.lock` beside the target, removed afterwards, so nothing is
    left in or beside the output. A second writer of the same target fails at once."""
    target = Path(target).expanduser().resolve()
    lock = target.with_name(f".{target.name}.lock")
    busy = AdaptError(f"{target} is being written by another adapt process; wait for it or choose another output")
    created = [folder for folder in (lock.parent, *lock.parent.parents) if not folder.exists()]
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise AdaptError(f"cannot write to {lock.parent}: {error.strerror}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise busy from None
            raise
        if _identity(lock) != (os.fstat(handle).st_dev, os.fstat(handle).st_ino):
            raise busy  # the holder before us removed this lock file and another writer made a new one
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock)
    finally:
        os.close(handle)
        for folder in created:  # folders made only to hold the lock, left empty by a refused or failed command
            with contextlib.suppress(OSError):
                folder.rmdir()


def check_run_folder(
    out: str | Path,
    run_files: Iterable[str],
    resume: bool,
    overwrite: bool,
    remove: bool = True,
    resumable: bool = True,
) -> None:
    """A training run may go into a new or unrelated folder; over an earlier run only when asked.

    run_files: the names (or glob patterns) a run of this command writes. With `overwrite`
    the earlier run's files are removed (and nothing else; `remove=False` in the other
    processes of a multi-process run); with `resume` they are continued from."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise AdaptError(f"{term('out')} {out} is a file, not a folder")
    if resume and overwrite:
        raise AdaptError(f"{term('resume')} continues the run in {term('out')} and {term('overwrite')} replaces it: give one of them")
    found = sorted({path.name for pattern in run_files for path in out.glob(pattern)}) if out.is_dir() else []
    if not found or resume:
        return
    if not overwrite:
        resume_hint = f"{term('resume')} to continue it, " if resumable else ""
        raise AdaptError(
            f"{out} already holds a run ({', '.join(found)}): pass {resume_hint}{term('overwrite')} to replace it, "
            f"or choose another {term('out')}"
        )
    for name in found if remove else ():
        remove_owned(out / name)


def remove_stale_temps(folder: Path, names: Iterable[str]) -> list[Path]:
    """Remove the temporary files an atomic write of one of `names` leaves when its process is killed
    (`.NAME.XXXXXXXX.tmp`, adapt.checkpoint.write_atomic's); call it under the folder's lock, when resuming.
    Returns what was removed."""
    import re

    pattern = re.compile(r"\.(" + "|".join(re.escape(n) for n in names if "*" not in n) + r")\.[A-Za-z0-9_]{8}\.tmp")
    removed = [path for path in folder.glob(".*.tmp") if path.is_file() and pattern.fullmatch(path.name)]
    for path in removed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return removed


SCRATCH_OWNER = "owner.pid"


@contextlib.contextmanager
def scratch_folder(output: str | Path, prefix: str) -> Iterator[Path]:
    """A temporary folder beside `output` (the same disk; made if missing), removed afterwards. One that a killed
    command left (its owner process gone, as its owner.pid says) is removed by the next command here."""
    import tempfile

    folder = Path(output).expanduser().resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{prefix}*"):
        try:
            pid = int((stale / SCRATCH_OWNER).read_text(encoding="ascii"))
        except (OSError, ValueError):
            continue  # not ours (no owner file): never touched
        if not _alive(pid):
            shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=folder) as scratch:
        (Path(scratch) / SCRATCH_OWNER).write_text(str(os.getpid()), encoding="ascii")
        yield Path(scratch)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_owned(path: Path) -> None:
    """Remove a file or folder that adapt wrote (a run file, a task folder of a continual run)."""
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            remove_owned(child)
        path.rmdir()
    else:
        path.unlink()


def check_owned_folder(
    out: str | Path, owned: Iterable[str], overwrite: bool, inputs: Iterable[str | Path | None] = (),
    folders: Mapping[str, Iterable[str]] | None = None, marker: str | None = None,
) -> None:  # fmt: skip
    """An export folder: new, empty, or holding only files that the export writes (with `overwrite`).

    Anything else in it is the user's, and a folder with such files is refused; so is one of the owned
    `folders` (name -> the files the export writes in it) holding anything else, at any depth, and, with a
    `marker` (a file only the export writes), a non-empty folder without it: another tool's, not an earlier
    export. Neither the folder nor any file it would write may be one of the inputs."""
    out, owned, inputs, folders = Path(out).expanduser(), set(owned), list(inputs), dict(folders or {})
    for target in (out, *(out / name for name in sorted(owned))):
        refuse_inputs(target, inputs)
    if not out.exists():
        return
    if not out.is_dir():
        raise AdaptError(f"{out} is a file; the export writes a folder")
    present = sorted(p.name for p in out.iterdir())
    foreign = [name for name in present if name not in owned]
    for name, files in folders.items():
        inside = out / name
        if inside.is_symlink() or inside.is_file():
            foreign.append(name)
        elif inside.is_dir():
            foreign += [f"{name}/{p.name}" for p in sorted(inside.iterdir()) if p.name not in set(files) or p.is_dir()]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
        raise AdaptError(f"{out} holds other files ({shown}); export into a new or empty folder")
    if present and marker is not None and marker not in present:
        raise AdaptError(f"{out} holds {', '.join(present)} but no {marker}: not an export of adapt's; export into a "
                         "new or empty folder")  # fmt: skip
    if present and not overwrite:
        raise AdaptError(f"{out} already holds an export ({', '.join(present)}); pass {term('overwrite')} to replace it")


@contextlib.contextmanager
def writing_file(
    out: str | Path, overwrite: bool, inputs: Iterable[str | Path | None] = (), option: str = "out"
) -> Iterator[None]:
    """Lock `out`, then check it (not an input; replaced only with `overwrite`) before the block writes it."""
    with exclusive_lock(out):
        check_output_file(out, overwrite, inputs, option)
        yield


def check_free_space(out: str | Path, needed_bytes: int) -> None:
    """Refuse before writing when the output's file system has clearly not enough room for it."""
    folder = _existing_ancestor(Path(out).expanduser().resolve())
    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise AdaptError(f"not enough space for {out}: it needs {needed_bytes / 2**20:,.1f} MiB, {folder} has "
                         f"{free / 2**20:,.1f} MiB free")  # fmt: skip


def check_output_file(
    out: str | Path, overwrite: bool, inputs: Iterable[str | Path | None] = (), option: str = "out"
) -> None:
    """A single output file: not an input, not a folder, not an existing file unless `overwrite`.

    option: the name of the option that gave `out` (--out, --plot), for the messages."""
    out = Path(out).expanduser()
    refuse_inputs(out, inputs, option)
    if out.is_dir():
        raise AdaptError(f"{term(option)} {out} is a folder; give a file name")
    if out.exists() and not out.is_file():
        raise AdaptError(f"{term(option)} {out} is not a regular file (a device or FIFO); adapt replaces only files")
    if out.exists() and not overwrite:
        raise AdaptError(f"{out} exists; pass {term('overwrite')} to replace it")
    parent = _existing_ancestor(out)
    if not parent.is_dir():
        raise AdaptError(f"cannot write {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise AdaptError(f"cannot write {out}: {parent} is not writable")
