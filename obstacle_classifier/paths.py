"""Where the package's installed data (config, launch files, default model) lives.

Resolution order, so that the same code works on a robot, in a colcon install, in the project
venv and straight from a source checkout:
1. the ament index (``AMENT_PREFIX_PATH``), as ``ros2 launch`` on a robot sees it;
2. the share directory the installed distribution's own file list names (a pip install with
   ``--user`` or ``--prefix``, or as root on Debian, puts it elsewhere than under
   ``sys.prefix``; another install there may be an older one), or ``share/`` beside the
   package (``pip install --target``, whose file list pip leaves pointing elsewhere);
3. ``<sys.prefix>/share/obstacle_classifier`` (a pip / venv install);
4. the source tree that holds this module (a development checkout).
"""
from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Optional

PACKAGE_NAME = 'obstacle_classifier'


def _has_config(directory: Path) -> bool:
    return (directory / 'config').is_dir()


def share_dir() -> Path:
    """Return the package share directory (holding ``config/`` and ``launch/``)."""
    if os.environ.get('AMENT_PREFIX_PATH'):
        try:
            from ament_index_python.packages import (PackageNotFoundError,
                                                     get_package_share_directory)
            try:
                candidate = Path(get_package_share_directory(PACKAGE_NAME))
                if _has_config(candidate):
                    return candidate
            except PackageNotFoundError:
                pass
        except ImportError:  # ament_index_python is absent off-robot; fall through
            pass
    source_root = Path(__file__).resolve().parent.parent  # a checkout, or site-packages
    candidates = [_distribution_share_dir(), source_root / 'share' / PACKAGE_NAME,
                  Path(sys.prefix) / 'share' / PACKAGE_NAME, source_root]
    for candidate in candidates:
        if candidate is not None and _has_config(candidate):
            return candidate
    raise FileNotFoundError(
        f'cannot find the {PACKAGE_NAME} share directory (looked in the ament index, then '
        f'{", ".join(str(candidate) for candidate in candidates if candidate is not None)})')


def _distribution_share_dir() -> Optional[Path]:
    """Where the installed distribution put its share files (from its RECORD), or None; only
    if that distribution's code is the code running (another install may come first on the
    path: a checkout's, or an older one's)."""
    try:
        distribution = metadata.distribution(PACKAGE_NAME)
    except metadata.PackageNotFoundError:
        return None
    ours = Path(distribution.locate_file(f'{PACKAGE_NAME}/paths.py'))
    if not ours.is_file() or not ours.resolve().samefile(Path(__file__).resolve()):
        return None
    marker = f'share/{PACKAGE_NAME}/package.xml'
    for file in distribution.files or ():
        if file.as_posix().endswith(marker):
            return Path(distribution.locate_file(file)).resolve().parent
    return None


def config_path(name: str) -> Path:
    """Return the path of an installed config file, e.g. ``config_path('features.yaml')``."""
    return share_dir() / 'config' / name
