"""The ament_python layout: package.xml, setup.cfg, the resource marker and setup.py's data_files.

No build here (test_colcon_build.py builds and inspects the install tree): these read the files.
"""
import ast
import configparser
import sys
import xml.etree.ElementTree as ET

import pytest

import ros_helpers

PKG = ros_helpers.PACKAGE_NAME
REPO = ros_helpers.REPO_ROOT
SHARE = f'share/{PKG}'


@pytest.fixture(scope='module')
def manifest():
    return ET.parse(REPO / 'package.xml').getroot()


def _texts(root, tag):
    return {element.text.strip() for element in root.findall(tag) if element.text}


def test_package_xml_is_format_3_with_the_required_dependencies(manifest):
    assert manifest.tag == 'package' and manifest.get('format') == '3'
    assert manifest.findtext('name', '').strip() == PKG
    depends = _texts(manifest, 'depend')
    exec_depends = _texts(manifest, 'exec_depend') | depends
    test_depends = _texts(manifest, 'test_depend') | depends
    missing = {'rclpy', 'sensor_msgs', 'std_msgs', 'python3-numpy'} - exec_depends
    assert not missing, f'package.xml lacks exec_depend {sorted(missing)}'
    assert 'python3-pytest' in test_depends, 'package.xml lacks test_depend python3-pytest'
    assert manifest.findtext('export/build_type', '').strip() == 'ament_python'
    for tag in ('version', 'description', 'maintainer', 'license'):
        assert manifest.findtext(tag, '').strip(), f'package.xml has no <{tag}>'
    assert manifest.find('maintainer').get('email'), 'package.xml <maintainer> has no email'


#: Imports that are not ROS packages: their rosdep key, or None for a PyPI-only package that
#: setup.py's install_requires must name instead.
THIRD_PARTY_KEYS = {'numpy': 'python3-numpy', 'yaml': 'python3-yaml', 'tqdm': 'python3-tqdm',
                    'matplotlib': 'python3-matplotlib', 'rosbags': None}
STANDARD_LIBRARY = set(sys.stdlib_module_names)


def _imported_top_level_modules() -> set[str]:
    """Every top-level module the package's code and launch files import."""
    names = set()
    for path in [*(REPO / PKG).rglob('*.py'), *(REPO / 'launch').glob('*.launch.py')]:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split('.')[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split('.')[0])
    return names - STANDARD_LIBRARY - {PKG}


def test_everything_the_code_imports_is_declared(manifest, setup_py_args):
    # rosdep installs what package.xml names; a module it leaves out fails on the robot only.
    depends = _texts(manifest, 'exec_depend') | _texts(manifest, 'depend')
    for module in sorted(_imported_top_level_modules()):
        if module in THIRD_PARTY_KEYS:
            key = THIRD_PARTY_KEYS[module]
            if key is None:
                assert module in setup_py_args['install_requires'], module
            else:
                assert key in depends, f'package.xml lacks exec_depend {key} ({module})'
        else:  # a ROS package
            assert module in depends, f'package.xml lacks exec_depend {module}'


def test_package_xml_agrees_with_setup_py(manifest, setup_py_args):
    assert setup_py_args['name'] == PKG
    assert setup_py_args['version'] == manifest.findtext('version', '').strip()


def test_setup_cfg_installs_scripts_where_ros2_run_looks():
    config = configparser.RawConfigParser()
    assert config.read(REPO / 'setup.cfg'), 'setup.cfg is missing'
    expected = f'$base/lib/{PKG}'
    assert config.get('develop', 'script_dir', fallback=None) == expected
    assert config.get('install', 'install_scripts', fallback=None) == expected


def test_resource_marker_exists():
    assert (REPO / 'resource' / PKG).is_file()


def test_setup_py_packages_exclude_tests(setup_py_args):
    packages = setup_py_args['packages']
    assert PKG in packages
    assert not [p for p in packages if p == 'test' or p.startswith('test.')]


def test_setup_py_data_files_cover_marker_manifest_launch_and_config(setup_py_args):
    data_files = {}
    for destination, sources in setup_py_args['data_files']:
        data_files.setdefault(destination.rstrip('/'), set()).update(sources)
    destinations = sorted(data_files)

    marker = 'share/ament_index/resource_index/packages'
    assert f'resource/{PKG}' in data_files.get(marker, ()), f'no marker in {destinations}'
    assert 'package.xml' in data_files.get(SHARE, ()), f'package.xml not in {destinations}'
    # Both directories are always declared, so files added later get installed with no edit.
    for kind in ('launch', 'config'):
        assert f'{SHARE}/{kind}' in data_files, f'{SHARE}/{kind} not in {destinations}'

    launch = {str(p.relative_to(REPO)) for p in REPO.glob('launch/*.launch.py')}
    config = {str(p.relative_to(REPO))
              for pattern in ('config/*.yaml', 'config/*.npz') for p in REPO.glob(pattern)}
    assert launch <= data_files[f'{SHARE}/launch'], \
        f'launch files not installed: {sorted(launch - data_files[SHARE + "/launch"])}'
    assert config <= data_files[f'{SHARE}/config'], \
        f'config files not installed: {sorted(config - data_files[SHARE + "/config"])}'


def test_console_scripts_point_at_existing_functions(setup_py_args):
    scripts = ros_helpers.console_scripts(setup_py_args)
    assert 'obstacle-classifier' in scripts
    for name, target in scripts.items():
        module, _, function = target.partition(':')
        assert module and function, f'{name} = {target!r}: expected "module:function"'
        path = REPO.joinpath(*module.split('.'))
        source = path.with_suffix('.py') if path.with_suffix('.py').is_file() \
            else path / '__init__.py'
        assert source.is_file(), f'{name}: module {module} not found in the checkout'
        functions = {node.name for node in ast.parse(source.read_text()).body
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assert function.split('.')[0] in functions, \
            f'{name}: {module} defines no top-level {function}()'
