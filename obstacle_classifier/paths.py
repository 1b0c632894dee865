"""Where the package's installed data (config, launch files, default model) lives.

Resolution order, so that the same code works on a robot, in a colcon install, in the project
venv and straight from a source checkout:
1. the ament index (``AMENT_PREFIX_PATH``), as ``ros2 launch`` on a robot sees it;
2. ``<sys.prefix>/share/obstacle_classifier`` (a pip / venv install);
3. the source tree that holds this module (a development checkout).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

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
    candidate = Path(sys.prefix) / 'share' / PACKAGE_NAME
    if _has_config(candidate):
        return candidate
    source_root = Path(__file__).resolve().parent.parent
    if _has_config(source_root):
        return source_root
    raise FileNotFoundError(
        f'cannot find the {PACKAGE_NAME} share directory (looked in the ament index, '
        f'{Path(sys.prefix) / "share" / PACKAGE_NAME} and {source_root})')


def config_path(name: str) -> Path:
    """Return the path of an installed config file, e.g. ``config_path('features.yaml')``."""
    return share_dir() / 'config' / name
