"""Crash-safe writes (obstacle_classifier.atomic): old or new file, never half of one."""
import os
import stat
import time

import pytest

from obstacle_classifier import atomic
from obstacle_classifier.atomic import atomic_write, atomic_write_bytes, remove_stale_temporaries


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize('exception', [Boom, KeyboardInterrupt])
def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path, exception):
    path = tmp_path / 'model.npz'
    atomic_write_bytes(path, b'previous contents')

    def write_half_then_fail(file):
        file.write(b'half of the new ')
        file.flush()
        raise exception('disk on fire')

    with pytest.raises(exception):
        atomic_write(path, write_half_then_fail)
    assert path.read_bytes() == b'previous contents'
    assert os.listdir(tmp_path) == ['model.npz']


def test_atomic_write_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append('dir' if stat.S_ISDIR(os.fstat(fd).st_mode) else 'file')
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, 'fsync', recording_fsync)
    atomic_write(tmp_path / 'out.bin', lambda file: file.write(b'abc'))
    assert synced == ['file', 'dir']
    assert (tmp_path / 'out.bin').read_bytes() == b'abc'


def test_atomic_write_file_mode(tmp_path):
    # A new file gets the usual 0666 & ~umask, not mkstemp's private 0600 ...
    old_umask = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / 'new.bin', b'x')
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(tmp_path / 'new.bin').st_mode) == 0o640
    # ... and a replaced file keeps its mode.
    (tmp_path / 'new.bin').chmod(0o604)
    atomic_write_bytes(tmp_path / 'new.bin', b'y')
    assert stat.S_IMODE(os.stat(tmp_path / 'new.bin').st_mode) == 0o604
    assert (tmp_path / 'new.bin').read_bytes() == b'y'


def test_stale_temporaries_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / 'online.npz'
    atomic_write_bytes(target, b'model')
    old = time.time() - 3600
    leftover = tmp_path / '.online.npz.k2j4_x7q.tmp'    # as atomic_write names its temporaries
    in_progress = tmp_path / '.online.npz.a8b9c0d1.tmp'  # another writer, right now
    other = tmp_path / '.other.npz.zzzzzzzz.tmp'            # another destination's
    for path in (leftover, in_progress, other):
        path.write_bytes(b'partial')
    os.utime(leftover, (old, old))
    os.utime(other, (old, old))
    assert remove_stale_temporaries(target) == [leftover]
    assert not leftover.exists() and in_progress.exists() and other.exists()
    assert target.read_bytes() == b'model'
    assert remove_stale_temporaries(tmp_path / 'missing.npz') == []


def test_a_directory_that_cannot_be_fsynced_does_not_fail_a_write_that_happened(
        tmp_path, monkeypatch):
    # A directory that is writable but not readable, or a file system that refuses directory
    # fsync: the file is replaced already, so the write must not be reported as failed.
    target = tmp_path / 'checkpoint.npz'
    atomic_write_bytes(target, b'OLD')

    def refuse(directory):
        raise PermissionError(13, 'Permission denied', str(directory))

    monkeypatch.setattr(atomic, '_fsync_directory', refuse)
    atomic_write_bytes(target, b'NEW')
    assert target.read_bytes() == b'NEW'


def _leftover(directory, name: str):
    path = directory / name
    path.write_bytes(b'partial')
    old = time.time() - 3600
    os.utime(path, (old, old))
    return path


def test_stale_temporaries_are_matched_by_name_exactly(tmp_path):
    # Brackets in a name are not a glob pattern, and model.npz's leftovers are not
    # model.npz.bak.npz's.
    own = _leftover(tmp_path, '.run[1].npz.abcd1234.tmp')
    other = _leftover(tmp_path, '.run1.npz.abcd1234.tmp')
    assert remove_stale_temporaries(tmp_path / 'run[1].npz') == [own]
    assert other.exists()
    backup = _leftover(tmp_path, '.model.npz.bak.npz.abcd1234.tmp')
    assert remove_stale_temporaries(tmp_path / 'model.npz') == []
    assert backup.exists()


def test_a_name_at_the_file_system_limit_is_written_and_its_leftovers_found(tmp_path):
    name = 'm' * 246 + '.npz'  # 250 bytes: fits, while '.' + name + '.<8>.tmp' would not
    atomic_write_bytes(tmp_path / name, b'model')
    assert (tmp_path / name).read_bytes() == b'model' and os.listdir(tmp_path) == [name]
    leftover = _leftover(tmp_path, '.' + name[:240] + '.abcd1234.tmp')
    assert remove_stale_temporaries(tmp_path / name) == [leftover]


def test_no_leftovers_in_a_directory_that_does_not_exist(tmp_path):
    # A checkpoint path whose directory is made later: the node looks for leftovers at start.
    assert remove_stale_temporaries(tmp_path / 'not_yet' / 'online.npz') == []
    (tmp_path / 'a_file').write_bytes(b'')
    assert remove_stale_temporaries(tmp_path / 'a_file' / 'online.npz') == []


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    # current.npz -> releases/v3.npz: the model in use is updated, the deployment's link kept.
    (tmp_path / 'releases').mkdir()
    target = tmp_path / 'releases' / 'v3.npz'
    target.write_bytes(b'old')
    link = tmp_path / 'current.npz'
    link.symlink_to(target.relative_to(tmp_path))
    atomic_write_bytes(link, b'new')
    assert link.is_symlink() and target.read_bytes() == b'new'
    assert sorted(os.listdir(tmp_path)) == ['current.npz', 'releases']
    # A killed write left its temporary file next to the target: found through the link too.
    leftover = _leftover(tmp_path / 'releases', '.v3.npz.abcd1234.tmp')
    assert remove_stale_temporaries(link) == [leftover]
    # A link that leads nowhere yet: the file it names is created.
    dangling = tmp_path / 'next.npz'
    dangling.symlink_to('releases/v4.npz')
    atomic_write_bytes(dangling, b'v4')
    assert (tmp_path / 'releases' / 'v4.npz').read_bytes() == b'v4' and dangling.is_symlink()


def test_a_directory_that_refuses_the_write_is_named_not_the_temporary_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'cannot write .*missing/model\.npz') as info:
        atomic_write_bytes(tmp_path / 'missing' / 'model.npz', b'x')
    assert '.tmp' not in str(info.value)


def test_a_link_to_a_directory_is_refused_naming_it(tmp_path):
    (tmp_path / 'models').mkdir()
    link = tmp_path / 'model.npz'
    link.symlink_to('models')
    with pytest.raises(IsADirectoryError, match='models is a directory') as info:
        atomic_write_bytes(link, b'x')
    assert '.tmp' not in str(info.value) and os.listdir(tmp_path / 'models') == []
