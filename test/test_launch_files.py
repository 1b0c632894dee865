"""The launch files and parameter files, checked without ``launch`` (not installable here).

Each ``launch/*.launch.py`` is parsed with ``ast``. Everything it names must exist: the package
(setup.py), every executable (setup.py console_scripts), every node name (the name the
executable really gives its node), every parameter (declared by that node, as reported by the
running node's ``list_parameters`` service), every file (in the checkout and installed by
setup.py's data_files) and every launch argument it reads (declared in the same file). The
``config/*.yaml`` parameter files are checked the same way, and the nodes are started with them.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

import ros_helpers

PKG = ros_helpers.PACKAGE_NAME
REPO = ros_helpers.REPO_ROOT
LAUNCH_FILES = sorted(REPO.glob('launch/*.launch.py'))
#: The launch / launch_ros API the files may use (a misspelt import fails here, not on a robot).
KNOWN_API = {
    'launch': {'LaunchDescription'},
    'launch.actions': {'DeclareLaunchArgument', 'IncludeLaunchDescription', 'GroupAction',
                       'SetEnvironmentVariable', 'LogInfo'},
    'launch.substitutions': {'LaunchConfiguration', 'PathJoinSubstitution', 'TextSubstitution',
                             'PythonExpression'},
    'launch.conditions': {'IfCondition', 'UnlessCondition'},
    'launch_ros.actions': {'Node', 'PushRosNamespace', 'SetParameter'},
    'launch_ros.substitutions': {'FindPackageShare'},
    'launch_ros.parameter_descriptions': {'ParameterValue'},
}
#: ParameterValue value_type -> rcl_interfaces ParameterType of the declared parameter.
PARAMETER_TYPES = {'bool': 1, 'int': 2, 'float': 3, 'str': 4}
#: Parameters every rclpy node has; not part of what a params file needs to know about.
IMPLICIT_PARAMETERS = {'use_sim_time', 'start_type_description_service'}
NAMESPACED_RATE_HZ = 7.0  # not the default: shows the params file applied
STARTUP_TIMEOUT = 60.0


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------

def _call_name(node: ast.AST) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else getattr(func, 'attr', '')


def _keywords(call: ast.Call) -> dict:
    return {kw.arg: kw.value for kw in call.keywords if kw.arg}


def _const(node: ast.AST):
    return node.value if isinstance(node, ast.Constant) else None


class LaunchFile:
    """What one launch file declares and names, from its syntax tree."""

    def __init__(self, path: Path):
        self.path = path
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.imports = [(node.module, alias.name) for node in ast.walk(self.tree)
                        if isinstance(node, ast.ImportFrom) for alias in node.names]
        self.calls = [node for node in ast.walk(self.tree) if isinstance(node, ast.Call)]
        # Variable -> the expression assigned to it (``params_file = LaunchConfiguration(..)``).
        self.variables = {target.id: node.value for node in ast.walk(self.tree)
                          if isinstance(node, ast.Assign) for target in node.targets
                          if isinstance(target, ast.Name)}
        self.arguments = {}  # declared launch argument -> its default value expression
        for call in self.calls:
            if _call_name(call) == 'DeclareLaunchArgument':
                name = _const(call.args[0]) if call.args else None
                assert isinstance(name, str), f'{path}: DeclareLaunchArgument without a name'
                keywords = _keywords(call)
                assert 'description' in keywords, f'{path}: argument {name!r} undocumented'
                self.arguments[name] = keywords.get('default_value')
        self.nodes = [call for call in self.calls if _call_name(call) == 'Node']

    def resolve(self, node: ast.AST) -> ast.AST:
        while isinstance(node, ast.Name) and node.id in self.variables:
            node = self.variables[node.id]
        return node

    def launch_configuration(self, node: ast.AST):
        node = self.resolve(node)
        if isinstance(node, ast.Call) and _call_name(node) == 'LaunchConfiguration':
            return _const(node.args[0])
        return None

    def files(self, node: ast.AST) -> list[str]:
        """Package-relative paths named by PathJoinSubstitution([FindPackageShare(pkg), ...])."""
        found = []
        for call in ast.walk(self.resolve(node)):
            if isinstance(call, ast.Call) and _call_name(call) == 'PathJoinSubstitution':
                parts = call.args[0].elts
                head = parts[0]
                assert _call_name(head) == 'FindPackageShare', f'{self.path}: {ast.dump(head)}'
                assert _const(head.args[0]) == PKG
                found.append('/'.join(_const(part) for part in parts[1:]))
        return found

    def parameter_files(self, node_call: ast.Call) -> list[str]:
        """Package-relative parameter files a Node gets (directly or as argument defaults)."""
        files = []
        parameters = _keywords(node_call).get('parameters')
        for element in getattr(parameters, 'elts', []):
            name = self.launch_configuration(element)
            if name is not None and self.arguments.get(name) is not None:
                files.extend(self.files(self.arguments[name]))
            files.extend(self.files(element))
        return files

    def parameter_names(self, node_call: ast.Call) -> set[str]:
        return set(self.parameter_values(node_call))

    def parameter_values(self, node_call: ast.Call) -> dict[str, ast.AST]:
        """Parameter name -> value expression, from the dicts a Node gets."""
        parameters = _keywords(node_call).get('parameters')
        values = {}
        for element in getattr(parameters, 'elts', []):
            element = self.resolve(element)
            if isinstance(element, ast.Dict):
                values.update({_const(key): value
                               for key, value in zip(element.keys, element.values)})
        return values


@pytest.fixture(scope='module')
def launch_files():
    assert LAUNCH_FILES, 'no launch/*.launch.py'
    return [LaunchFile(path) for path in LAUNCH_FILES]


def _installed(setup_args) -> dict:
    """Install destination -> set of source files, from setup.py's data_files."""
    installed = {}
    for destination, sources in setup_args['data_files']:
        installed.setdefault(destination.rstrip('/'), set()).update(sources)
    return installed


# ----------------------------------------------------------------------------------------------
# The nodes, started with the shipped parameter files
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def running_nodes(tmp_path_factory, setup_py_args, ros_domain_id):
    """{executable: (node name, {parameter: ParameterDescriptor}, {parameter: ParameterValue})}
    from the running nodes, started in a namespace with their params files."""
    rclpy = ros_helpers.import_rclpy()
    from rcl_interfaces.srv import DescribeParameters, GetParameters, ListParameters
    from rclpy.context import Context

    scripts = ros_helpers.console_scripts(setup_py_args)
    executables = {name: target.split(':')[0] for name, target in scripts.items()
                   if name in ('classifier_node', 'sidewalk_simulator')}
    assert len(executables) == 2, scripts
    namespace = ros_helpers.unique_name('launch')
    launcher = ros_helpers.ProcessLauncher(tmp_path_factory.mktemp('nodes'),
                                           env=ros_helpers.ros_subprocess_env())
    # The shipped classifier params with one value off its default, to see the file applied
    # under a namespace (see test_the_params_files_apply_in_a_namespace).
    classifier_params = tmp_path_factory.mktemp('params') / 'obstacle_classifier.yaml'
    shipped = (REPO / 'config' / 'obstacle_classifier.yaml').read_text()
    assert '    rate_hz: 20.0\n' in shipped
    classifier_params.write_text(shipped.replace('    rate_hz: 20.0\n',
                                                 f'    rate_hz: {NAMESPACED_RATE_HZ}\n'))
    context = Context()
    rclpy.init(args=[], context=context, domain_id=ros_domain_id)
    ros = ros_helpers.RosTestNode(context)
    try:
        for executable, module in executables.items():
            params = (classifier_params if executable == 'classifier_node'
                      else REPO / 'config' / 'sidewalk_simulator.yaml')
            launcher.start_module(executable, module, [
                '--ros-args', '--params-file', str(params), '-r', f'__ns:=/{namespace}'])

        def nodes():
            return {name for name, ns in ros.node.get_node_names_and_namespaces()
                    if ns == f'/{namespace}'}
        assert ros.spin_until(lambda: len(nodes()) >= 2, timeout=STARTUP_TIMEOUT), \
            launcher.reports()
        result = {}
        names = sorted(nodes())
        for executable, proc in zip(executables, launcher.processes):
            # The name each executable gives its node is in its log lines: [<ns>.<name>].
            node_name = proc.wait_for_output(rf'\[{namespace}\.(\w+)\]',
                                             stream='stderr').group(1)
            assert node_name in names
            base = f'/{namespace}/{node_name}'
            listed = ros.call(ListParameters, f'{base}/list_parameters',
                              ListParameters.Request()).result.names
            described = ros.call(DescribeParameters, f'{base}/describe_parameters',
                                 DescribeParameters.Request(names=list(listed))).descriptors
            values = ros.call(GetParameters, f'{base}/get_parameters',
                              GetParameters.Request(names=list(listed))).values
            result[executable] = (node_name, {d.name: d for d in described},
                                  dict(zip(listed, values)))
        for proc in launcher.processes:
            assert proc.is_running(), proc.report()
        yield result
    finally:
        ros.close()
        context.try_shutdown()
        codes = launcher.stop_all()
        assert not launcher.leaked()
    assert all(code == 0 for code in codes.values()), launcher.reports()


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------

def test_launch_files_import_only_the_known_launch_api(launch_files):
    for launch in launch_files:
        functions = [node.name for node in launch.tree.body if isinstance(node, ast.FunctionDef)]
        assert 'generate_launch_description' in functions, launch.path
        for module, name in launch.imports:
            assert module in KNOWN_API and name in KNOWN_API[module], (launch.path, module, name)


def test_every_launch_configuration_is_a_declared_argument(launch_files):
    for launch in launch_files:
        used = {_const(call.args[0]) for call in launch.calls
                if _call_name(call) == 'LaunchConfiguration'}
        assert used <= set(launch.arguments), (launch.path, used - set(launch.arguments))
        assert set(launch.arguments) <= used, f'{launch.path}: unused arguments'


def test_packages_executables_and_files_exist(launch_files, setup_py_args):
    scripts = ros_helpers.console_scripts(setup_py_args)
    installed = _installed(setup_py_args)
    for launch in launch_files:
        assert launch.nodes, launch.path
        for node in launch.nodes:
            keywords = _keywords(node)
            assert _const(keywords['package']) == setup_py_args['name'] == PKG
            assert _const(keywords['executable']) in scripts, ast.dump(keywords['executable'])
            for relative in launch.parameter_files(node):
                assert (REPO / relative).is_file(), f'{launch.path} names missing {relative}'
                directory, _, name = relative.rpartition('/')
                assert relative in installed.get(f'share/{PKG}/{directory}', ()), (
                    f'{relative} is not installed to share/{PKG}/{directory}')
            assert launch.parameter_files(node), f'{launch.path}: a node without a params file'
    assert f'launch/{LAUNCH_FILES[0].name}' in installed[f'share/{PKG}/launch']


def test_node_names_and_parameters_match_the_running_nodes(launch_files, running_nodes):
    for launch in launch_files:
        for node in launch.nodes:
            keywords = _keywords(node)
            executable = _const(keywords['executable'])
            node_name, declared, _ = running_nodes[executable]
            # The params files are keyed by node name: a renamed node would ignore them.
            assert _const(keywords['name']) == node_name, (launch.path, executable)
            unknown = launch.parameter_names(node) - set(declared)
            assert not unknown, f'{launch.path}: {executable} declares no {sorted(unknown)}'
            for relative in launch.parameter_files(node):
                data = yaml.safe_load((REPO / relative).read_text())
                # Keyed for any namespace: a plain node name would only match the root one.
                assert list(data) == [f'/**/{node_name}'], f'{relative}: keyed {list(data)}'
                names = set(data[f'/**/{node_name}']['ros__parameters'])
                assert names <= set(declared), f'{relative}: unknown {names - set(declared)}'


def test_the_shipped_params_files_cover_every_documented_parameter(running_nodes):
    for executable, (node_name, declared, _) in running_nodes.items():
        own = {name: d for name, d in declared.items()
               if name not in IMPLICIT_PARAMETERS and not name.startswith('qos_overrides.')}
        relative = f'config/{node_name}.yaml'
        shipped = set(yaml.safe_load((REPO / relative).read_text())[f'/**/{node_name}']
                      ['ros__parameters'])
        assert shipped == set(own), f'{relative} vs the node: {shipped ^ set(own)}'
        for name, descriptor in own.items():
            assert len(descriptor.description) > 20, f'{executable}: {name} undocumented'
    _, classifier, _ = running_nodes['classifier_node']
    assert classifier['feature_config'].read_only and not classifier['threshold'].read_only
    assert not classifier['model_path'].read_only and not classifier['rate_hz'].read_only
    assert classifier['threshold'].floating_point_range[0].from_value == -1.0
    # Per-input QoS is overridable at launch (rclpy's QoS overriding options).
    assert any(name.startswith('qos_overrides./') and name.endswith('.reliability')
               for name in classifier), sorted(classifier)
    _, simulator, _ = running_nodes['sidewalk_simulator']
    assert simulator['seed'].read_only and simulator['scenario'].read_only
    assert not simulator['real_time_factor'].read_only


def test_the_params_files_apply_in_a_namespace(running_nodes):
    # Keyed by the bare node name, a params file matches only the root namespace and is
    # silently ignored under namespace:=robot1; the shipped files use /**/<node name>.
    _, _, values = running_nodes['classifier_node']
    assert values['rate_hz'].double_value == NAMESPACED_RATE_HZ


def test_launch_arguments_reach_parameters_with_their_declared_type(launch_files, running_nodes):
    # launch_ros reads a bare LaunchConfiguration value as YAML: real_time_factor:=2 would be
    # an integer, and the node refuses an integer for a double at start-up.
    for launch in launch_files:
        for node in launch.nodes:
            _, declared, _ = running_nodes[_const(_keywords(node)['executable'])]
            for name, value in launch.parameter_values(node).items():
                value = launch.resolve(value)
                if launch.launch_configuration(value) is not None:
                    raise AssertionError(f'{launch.path}: {name} takes a launch argument '
                                         'untyped: wrap it in ParameterValue(value_type=...)')
                if isinstance(value, ast.Call) and _call_name(value) == 'ParameterValue':
                    value_type = _keywords(value)['value_type']
                    assert isinstance(value_type, ast.Name), ast.dump(value_type)
                    assert PARAMETER_TYPES[value_type.id] == declared[name].type, (
                        f'{launch.path}: {name} given as {value_type.id}, declared as '
                        f'type {declared[name].type}')
