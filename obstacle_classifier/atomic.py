"""Crash-safe file writes: a reader sees either the complete old file or the complete new one.

The data is written to a temporary file in the destination's own directory (``os.replace`` is only
atomic within one file system), flushed and fsynced, renamed over the destination, and finally the
directory is fsynced so that the rename itself survives a power cut. On any failure the temporary
file is removed and the previous file, if there was one, is left untouched.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Union

PathLike = Union[str, os.PathLike]

__all__ = ['atomic_write', 'atomic_write_bytes', 'remove_stale_temporaries', 'write_destination']

#: A temporary file older than this is a leftover, not a write in progress (a model file is
#: written in well under a second).
STALE_TEMPORARY_S = 60.0
#: Bytes of the destination's name kept in a temporary file's name: the name then fits the
#: file system's 255-byte limit whatever the destination's (14 bytes go to '.' and mkstemp's
#: '.<8 random>.tmp').
_NAME_BYTES_IN_TEMPORARY = 240


def atomic_write(path: PathLike, write_fn: Callable[[BinaryIO], object]) -> None:
    """Atomically replace ``path`` with whatever ``write_fn`` writes.

    Args:
        path: destination file. Its directory must exist. A symbolic link is written through:
            the file it points to is replaced and the link stays (as ``open(path, 'w')``
            would), e.g. a ``current.npz`` link to the model in use.
        write_fn: called once with a binary file object opened for writing; its return value is
            ignored. If it raises, the exception propagates, the destination is unchanged and no
            temporary file is left behind.

    Raises:
        OSError: the destination is a directory, or its directory refuses the temporary file
            (read-only, missing, full); the message names the destination, not the temporary
            file.
    """
    destination = write_destination(path)
    if destination.is_dir():
        raise IsADirectoryError(errno.EISDIR, f'cannot write {path}: {destination} is a '
                                              f'directory')
    directory = destination.parent
    # A hidden name that says what it belongs to, so a leftover after a hard kill is recognisable.
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f'.{_temporary_stem(destination)}.',
                                         suffix='.tmp', dir=directory)
    except OSError as exc:
        raise type(exc)(exc.errno, f'cannot write {path}: {exc.strerror} ({directory})') from exc
    try:
        with os.fdopen(fd, 'wb') as temp_file:
            write_fn(temp_file)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        # mkstemp creates 0600; give the file the mode an ordinary open() would have given it.
        os.chmod(temp_name, _target_mode(destination))
        os.replace(temp_name, destination)
    except BaseException:  # including KeyboardInterrupt: never leave the temp file behind
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    try:
        _fsync_directory(directory)
    except OSError:
        # The new file is in place; only the rename's durability across a power cut is not
        # assured (a directory that cannot be opened for reading, a file system that refuses
        # directory fsync). Raising now would report a write that happened as failed.
        pass


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    atomic_write(path, lambda file: file.write(data))


def remove_stale_temporaries(path: PathLike, older_than_s: float = STALE_TEMPORARY_S
                             ) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` to ``path`` left behind when its
    process was killed (``kill -9``, power loss) between creating and renaming them.

    Only files named as :func:`atomic_write` names them for this destination
    (``.<name>.<random>.tmp`` in its directory) and last modified more than ``older_than_s``
    seconds ago are removed, so a write in progress by another process is left alone. Returns
    the paths removed; files that vanish or cannot be removed meanwhile are skipped.
    """
    destination = write_destination(path)
    cutoff = time.time() - older_than_s
    # Exactly mkstemp's names for this destination: a glob of the name would treat [ ] * ? in
    # it as patterns and match other files' leftovers.
    own_name = re.compile(re.escape(f'.{_temporary_stem(destination)}.') + r'[A-Za-z0-9_]{8}'
                          r'\.tmp')
    try:
        candidates = list(destination.parent.iterdir())
    except OSError:  # no such directory (yet), or not one: nothing of ours there
        return []
    removed = []
    for candidate in candidates:
        if not own_name.fullmatch(candidate.name):
            continue
        try:
            if candidate.is_file() and candidate.stat().st_mtime < cutoff:
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            continue
    return removed


def write_destination(path: PathLike) -> Path:
    """The file an :func:`atomic_write` to ``path`` lands in: symbolic links followed (the path
    itself if it is none; for a link that leads nowhere, the missing file it names)."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)


def _temporary_stem(destination: Path) -> str:
    """The part of a temporary file's name that says which destination it is for."""
    name = destination.name
    while len(os.fsencode(name)) > _NAME_BYTES_IN_TEMPORARY:
        name = name[:-1]  # a character at a time: never cut inside one
    return name


def _target_mode(destination: Path) -> int:
    """Permission bits for the new file: the old file's if it exists, else 0666 minus the umask."""
    try:
        return stat.S_IMODE(os.stat(destination).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_current_umask()


def _current_umask() -> int:
    # Linux exposes the umask read-only; os.umask() can only read it by setting it, which races
    # with other threads creating files, so it is the fallback.
    try:
        with open('/proc/self/status', encoding='ascii') as status:
            for line in status:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Persist the directory entry created by ``os.replace`` (POSIX; a no-op elsewhere)."""
    if os.name != 'posix':
        return
    dir_fd = os.open(directory, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
