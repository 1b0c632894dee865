"""Where the installed data is found (paths.py), however the package was installed.

A wheel of the package is installed with ``pip install --target`` (as ``--user`` or ``--prefix``
would, its share files land beside it, not under ``sys.prefix``) and imported from there in a
fresh interpreter.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from obstacle_classifier import paths

SOURCES = ('obstacle_classifier', 'config', 'launch', 'resource', 'package.xml', 'setup.py',
           'setup.cfg', 'README.md')


def test_the_checkout_is_found_from_the_development_install(repo_root):
    assert paths.share_dir() == repo_root
    assert paths.config_path('features.yaml').is_file()


@pytest.fixture(scope='module')
def target_install(tmp_path_factory, repo_root) -> Path:
    """The package installed from a wheel with ``pip install --target``."""
    root = tmp_path_factory.mktemp('wheel')
    source = root / 'source'
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (repo_root / name).is_dir() else shutil.copy2
        copy(repo_root / name, source / name)
    pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '--quiet']
    subprocess.run([*pip, 'wheel', '--no-deps', '--no-build-isolation', '-w', str(root / 'dist'),
                    str(source)], check=True, cwd=root, timeout=300)
    (wheel,) = (root / 'dist').glob('obstacle_classifier-*.whl')
    target = root / 'target'
    subprocess.run([*pip, 'install', '--no-deps', '--target', str(target), str(wheel)],
                   check=True, cwd=root, timeout=300)
    # pip --target leaves the RECORD's share paths pointing outside the target; rewritten as a
    # --prefix or --user install writes them (relative to where the package is), so that both
    # ways of finding the share files are exercised. (--prefix with this venv's pip would
    # uninstall the venv's own editable install.)
    (record,) = target.glob('obstacle_classifier-*.dist-info/RECORD')
    record.write_text(record.read_text().replace('../../share/', 'share/'))
    return target


def test_a_target_install_finds_its_own_share_files(target_install, tmp_path):
    # Not the checkout's (which this venv also has), nor anything under sys.prefix.
    probe = ('import obstacle_classifier.paths as p\n'
             'print(p.__file__)\nprint(p.share_dir())\nprint(p.config_path("features.yaml"))\n')
    env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': str(target_install)}
    done = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    module, share, features = done.stdout.splitlines()
    assert Path(module).is_relative_to(target_install)
    assert Path(share) == (target_install / 'share' / 'obstacle_classifier').resolve()
    assert Path(features).is_file()


def test_the_running_code_finds_its_own_files_not_another_installs(
        target_install, repo_root, tmp_path):
    # The checkout first on the path, an install after it: the checkout's code runs, so the
    # checkout's config is the one to read (not the other install's, which may be older).
    probe = 'import obstacle_classifier.paths as p\nprint(p.__file__)\nprint(p.share_dir())\n'
    env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': f'{repo_root}:{target_install}'}
    done = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    module, share = done.stdout.splitlines()
    assert Path(module).is_relative_to(repo_root) and Path(share) == repo_root
