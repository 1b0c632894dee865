"""The feature pipeline: timestamped sensor readings in, a fixed-length feature vector per tick.

This is the single code path shared by the live node (readings from subscriptions, a tick per timer
callback), offline bag extraction and the simulator (readings replayed in time order, see
:func:`replay`). It imports no ROS: messages are read by plain attribute access, so an rclpy
message, a ``rosbags``-deserialised message and a ``types.SimpleNamespace`` all work.

Data flow for one input::

    message --extract_values--> raw (k,) --prepare_values--> values (dim,)  [inf maps, sectors]
    values --FeaturePipeline.add--> validated, buffered (stamp_ns, values)
    FeaturePipeline.tick(t) --> aggregations over readings stamped in (t - window, t]

Design rules:

* Time is integer nanoseconds everywhere; no float time enters the pipeline, so a tick's vector is
  a pure function of the buffered readings and ``t``, bitwise reproducible (on one NumPy build)
  whether the readings came from a live node, a bag or the simulator.
* Each input has a preallocated buffer sized from its window and declared maximum rate: memory is
  flat however long the node runs. Readings are never pruned by ticks, only evicted oldest-first
  when the buffer is full, so ticks may be evaluated in any order while their readings are held.
* ``tick`` gathers every input's window into one flat array and computes all aggregations with a
  handful of ``ufunc.reduceat`` calls, so its cost hardly depends on the number of readings.
"""
from __future__ import annotations

import functools
import math
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np
import yaml

from obstacle_classifier.paths import config_path

__all__ = [
    'AGGREGATIONS', 'MSG_TYPES', 'READING_REFUSALS', 'REJECTION_REASONS', 'FeatureConfig',
    'FeatureConfigError', 'FeaturePipeline', 'InputSpec', 'InputStats', 'ReadingRefused',
    'TickResult', 'check_limits', 'default_config_path',
    'extract_values', 'load_default_config', 'message_stamp_ns', 'prepare_values', 'replay',
]

PathLike = Union[str, os.PathLike]

#: Window aggregations, in the order they appear in a config and in the feature names.
AGGREGATIONS = ('last', 'mean', 'min', 'max', 'std')
#: Reasons ``FeaturePipeline.add`` gives for refusing a reading, in the order they are checked
#: ('blind_sector', last here, is what 'non_finite' is called for a scan's sector values).
REJECTION_REASONS = ('unknown_input', 'wrong_length', 'non_finite', 'out_of_range',
                     'future_stamp', 'out_of_order', 'blind_sector')
#: How far a header stamp may lie ahead of the time the reading was received, by default.
DEFAULT_MAX_STAMP_LEAD_S = 0.5
POLICIES = ('skip', 'fill')
STAMP_SOURCES = ('header', 'receive')
QOS_PROFILES = ('sensor_data', 'reliable')
DEFAULT_MAX_RATE_HZ = 250.0
#: Extra time a buffer holds beyond its window: readings stamped ahead of the tick being computed
#: (clock skew, header stamps ahead of sim time) and the gap between two ticks.
BUFFER_HEADROOM_S = 1.0
#: The largest max_stamp_lead_s: readings accepted further ahead would fill the headroom and
#: push a tick's window out of the buffer (0.1 s is left for the gap between ticks).
MAX_STAMP_LEAD_S = 0.9

_VECTOR3 = ('x', 'y', 'z')
_SCALAR, _SEQUENCE = 'scalar', 'sequence'
#: Supported message types -> readable fields -> whether one field yields one value or many.
MSG_TYPES: Mapping[str, Mapping[str, str]] = {
    'sensor_msgs/msg/Range': {
        'range': _SCALAR, 'min_range': _SCALAR, 'max_range': _SCALAR, 'field_of_view': _SCALAR},
    'sensor_msgs/msg/Imu': {
        **{f'linear_acceleration.{axis}': _SCALAR for axis in _VECTOR3},
        **{f'angular_velocity.{axis}': _SCALAR for axis in _VECTOR3},
        **{f'orientation.{axis}': _SCALAR for axis in ('x', 'y', 'z', 'w')}},
    'sensor_msgs/msg/LaserScan': {'ranges': _SEQUENCE, 'intensities': _SEQUENCE},
    'std_msgs/msg/Float32': {'data': _SCALAR},
    'std_msgs/msg/Float64': {'data': _SCALAR},
    'std_msgs/msg/Float32MultiArray': {'data': _SEQUENCE},
}
#: The message members that bound a measured field (REP 117): (type, field) -> (min, max).
SENSOR_LIMIT_MEMBERS: Mapping[tuple[str, str], tuple[str, str]] = {
    ('sensor_msgs/msg/Range', 'range'): ('min_range', 'max_range'),
    ('sensor_msgs/msg/LaserScan', 'ranges'): ('range_min', 'range_max'),
}
#: Why a message's values are refused before the pipeline sees them (:class:`ReadingRefused`):
#: a finite range outside the limits its message states; limits that are no interval (NaN, min
#: above max; both 0 is a pair never filled in, which states no limits).
READING_REFUSALS = ('outside_sensor_limits', 'bad_sensor_limits')
_MSG_TYPES_WITH_HEADER = frozenset(
    {'sensor_msgs/msg/Range', 'sensor_msgs/msg/Imu', 'sensor_msgs/msg/LaserScan'})

_NAME_PATTERN = re.compile(r'[A-Za-z][A-Za-z0-9_]*\Z')
_TOPIC_PATTERN = re.compile(r'(~/|/)?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*\Z')
_NS_PER_S = 1_000_000_000
#: Scans of at most this many beams have their sector layout cached (planar lidars: 360-4,000).
MAX_CACHED_BEAMS = 16384
_SECTOR_EDGE_TOLERANCE = 1e-6  # rad at the span's edges; fraction of a sector at its boundaries


class FeatureConfigError(ValueError):
    """A feature config that cannot be used; the message names the file, the input and the key."""


class ReadingRefused(ValueError):
    """A message whose values describe no valid measurement; ``reason`` is one of
    :data:`READING_REFUSALS` (counted like the pipeline's rejections)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f'{reason}: {detail}')
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputSpec:
    """One declared sensor input: where it comes from, how it is read, validated and aggregated.

    Constructed by :class:`FeatureConfig` (which validates it); see ``config/features.yaml`` for
    the meaning of every key.
    """

    name: str
    topic: str
    msg_type: str
    fields: tuple[str, ...]
    dim: int
    valid_range: tuple[float, float]
    timeout_s: float
    window_s: float
    aggregations: tuple[str, ...]
    policy: str = 'skip'
    fill_value: float = 0.0
    stamp_source: str = 'header'
    qos: str = 'sensor_data'
    posinf_value: float | None = None
    neginf_value: float | None = None
    sectors: int | None = None
    sector_span_deg: tuple[float, float] | None = None
    blind_sector_value: float | None = None
    max_rate_hz: float = DEFAULT_MAX_RATE_HZ
    sensor_limits: bool = True

    @functools.cached_property
    def limit_members(self) -> tuple[str, str, str] | None:
        """(measured field, min member, max member) if readings are checked against the limits
        their own message states (``sensor_limits``, a Range's range or a LaserScan's ranges),
        else None."""
        if self.sensor_limits:
            for path in self.fields:
                members = SENSOR_LIMIT_MEMBERS.get((self.msg_type, path))
                if members is not None:
                    return (path, *members)
        return None

    @property
    def window_ns(self) -> int:
        return _seconds_to_ns(self.window_s)

    @property
    def timeout_ns(self) -> int:
        return _seconds_to_ns(self.timeout_s)

    @property
    def buffer_capacity(self) -> int:
        """Readings held: the window plus headroom at the declared maximum rate."""
        return math.ceil(self.max_rate_hz * (self.window_s + BUFFER_HEADROOM_S)) + 1

    def feature_names(self) -> tuple[str, ...]:
        """This input's feature names: aggregation-major, then a ``.stale`` flag if it fills."""
        if self.dim == 1:
            names = [f'{self.name}.{agg}' for agg in self.aggregations]
        else:
            names = [f'{self.name}[{i}].{agg}'
                     for agg in self.aggregations for i in range(self.dim)]
        if self.policy == 'fill':
            names.append(f'{self.name}.stale')
        return tuple(names)


def _seconds_to_ns(seconds: float) -> int:
    return int(round(seconds * _NS_PER_S))


_REQUIRED_INPUT_KEYS = ('name', 'topic', 'msg_type', 'fields', 'dim', 'valid_range', 'timeout_s',
                        'window_s', 'aggregations', 'policy')
_OPTIONAL_INPUT_KEYS = ('fill_value', 'stamp_source', 'qos', 'posinf_value', 'neginf_value',
                        'sectors', 'sector_span_deg', 'blind_sector_value', 'max_rate_hz',
                        'sensor_limits')
_TOP_LEVEL_KEYS = ('rate_hz', 'inputs')
_OPTIONAL_TOP_LEVEL_KEYS = ('max_stamp_lead_s',)


@dataclass(frozen=True)
class FeatureConfig:
    """The declared inputs and the tick rate; validated on construction.

    ``max_stamp_lead_s``: a reading whose header stamp lies further ahead of the time it was
    received is refused ('future_stamp'): one stamp from a glitching sensor clock would
    otherwise make every later reading of that input 'out_of_order' until time caught up. At
    most :data:`MAX_STAMP_LEAD_S`, what the buffers' headroom holds.
    """

    inputs: tuple[InputSpec, ...]
    rate_hz: float
    source: str = '<dict>'
    max_stamp_lead_s: float = DEFAULT_MAX_STAMP_LEAD_S

    def __post_init__(self) -> None:
        object.__setattr__(self, 'inputs', tuple(self.inputs))
        if not _is_number(self.rate_hz) or not math.isfinite(self.rate_hz) or self.rate_hz <= 0:
            raise FeatureConfigError(
                f"{self.source}: key 'rate_hz': must be a positive number, got {self.rate_hz!r}")
        if (not _is_number(self.max_stamp_lead_s)
                or not 0 < self.max_stamp_lead_s <= MAX_STAMP_LEAD_S):
            raise FeatureConfigError(
                f"{self.source}: key 'max_stamp_lead_s': must be a number of seconds in "
                f'(0, {MAX_STAMP_LEAD_S:g}] (the input buffers hold {BUFFER_HEADROOM_S:g} s '
                'beyond their windows: readings stamped further ahead would push the '
                f'windows out), got {self.max_stamp_lead_s!r}')
        if not self.inputs:
            raise FeatureConfigError(f"{self.source}: key 'inputs': at least one input is needed")
        seen_names: dict[str, int] = {}
        seen_topics: dict[str, str] = {}
        for index, spec in enumerate(self.inputs):
            _check_input(spec, self.source, index)
            if spec.name in seen_names:
                raise FeatureConfigError(
                    f"{self.source}: input '{spec.name}': key 'name': duplicate of "
                    f'inputs[{seen_names[spec.name]}]')
            if spec.topic in seen_topics:
                raise FeatureConfigError(
                    f"{self.source}: input '{spec.name}': key 'topic': {spec.topic!r} is already "
                    f"read by input '{seen_topics[spec.topic]}'")
            seen_names[spec.name] = index
            seen_topics[spec.topic] = spec.name

    @classmethod
    def from_yaml(cls, path: PathLike) -> FeatureConfig:
        """Load and validate a feature config file."""
        source = os.fspath(path)
        try:
            with open(source, encoding='utf-8') as stream:
                data = yaml.load(stream, Loader=_StrictYamlLoader)  # a SafeLoader subclass
        except OSError as exc:
            raise FeatureConfigError(
                f'{source}: cannot read feature config: {exc.strerror or exc}') from exc
        except UnicodeDecodeError as exc:
            raise FeatureConfigError(f'{source}: not UTF-8 text ({exc.reason} at byte '
                                     f'{exc.start})') from exc
        except yaml.YAMLError as exc:
            raise FeatureConfigError(f'{source}: not valid YAML: {exc}') from exc
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = '<dict>') -> FeatureConfig:
        """Build a config from parsed YAML (or any mapping of the same shape)."""
        if not isinstance(data, Mapping):
            raise FeatureConfigError(
                f'{source}: the top level must be a mapping with keys {list(_TOP_LEVEL_KEYS)}, '
                f'got {type(data).__name__}')
        _check_keys(data, required=_TOP_LEVEL_KEYS, optional=_OPTIONAL_TOP_LEVEL_KEYS,
                    where=f'{source}:')
        raw_inputs = data['inputs']
        if not isinstance(raw_inputs, list):
            raise FeatureConfigError(
                f"{source}: key 'inputs': must be a list of input mappings, "
                f'got {type(raw_inputs).__name__}')
        inputs = tuple(_parse_input(item, source, index) for index, item in enumerate(raw_inputs))
        lead = {key: data[key] for key in _OPTIONAL_TOP_LEVEL_KEYS if key in data}
        return cls(inputs=inputs, rate_hz=data['rate_hz'], source=source, **lead)

    @functools.cached_property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the d features, in vector order (stable for a given config)."""
        return tuple(name for spec in self.inputs for name in spec.feature_names())

    @functools.cached_property
    def _by_name(self) -> dict[str, InputSpec]:
        return {spec.name: spec for spec in self.inputs}

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    @property
    def tick_period_ns(self) -> int:
        """The tick period at ``rate_hz``, rounded to whole nanoseconds."""
        return _seconds_to_ns(1.0 / self.rate_hz)

    def input(self, name: str) -> InputSpec:
        """The input called ``name``; KeyError naming the known inputs otherwise."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f'no input {name!r} in {self.source} '
                           f'(inputs: {", ".join(self.input_names)})') from None


def default_config_path() -> Path:
    """The installed ``config/features.yaml``."""
    return config_path('features.yaml')


def load_default_config() -> FeatureConfig:
    """The default feature config the node, the simulator and training share."""
    return FeatureConfig.from_yaml(default_config_path())


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one) and
    reads ``1e-3`` and ``5e+2`` as numbers (YAML 1.2; PyYAML's YAML 1.1 makes them strings,
    and a window of ``1e-3`` would be refused as "must be a number, got '1e-3'")."""


def _construct_mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode,
                                          deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                'while constructing a mapping', node.start_mark,
                f'found duplicate key {key!r}', key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictYamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                  _construct_mapping_without_duplicates)
_StrictYamlLoader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$'),
    list('-+0123456789.'))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_keys(data: Mapping, required: Sequence[str], optional: Sequence[str],
                where: str) -> None:
    allowed = set(required) | set(optional)
    for key in data:
        if key not in allowed:
            raise FeatureConfigError(
                f"{where} key {key!r}: unknown key (allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in data:
            raise FeatureConfigError(f"{where} key '{key}': missing")


def _parse_input(item: object, source: str, index: int) -> InputSpec:
    """Type-check one raw input mapping and convert it to an (unvalidated) InputSpec."""
    label = f'{source}: inputs[{index}]:'
    if not isinstance(item, Mapping):
        raise FeatureConfigError(f'{label} must be a mapping, got {type(item).__name__}')
    name = item.get('name')
    if isinstance(name, str) and name:
        label = f"{source}: input '{name}':"

    def fail(key: str, problem: str) -> FeatureConfigError:
        return FeatureConfigError(f"{label} key '{key}': {problem}")

    def string(key: str) -> str:
        value = item[key]
        if not isinstance(value, str) or not value:
            raise fail(key, f'must be a non-empty string, got {value!r}')
        return value

    def number(key: str, allow_none: bool = False) -> float | None:
        value = item[key]
        if value is None and allow_none:
            return None
        if not _is_number(value) or math.isnan(value):
            raise fail(key, f'must be a number, got {value!r}')
        return float(value)

    def integer(key: str) -> int | None:
        value = item[key]
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail(key, f'must be an integer, got {value!r}')
        return value

    def pair(key: str) -> tuple[float, float] | None:
        value = item[key]
        if value is None:
            return None
        if (not isinstance(value, list) or len(value) != 2
                or not all(_is_number(v) and not math.isnan(v) for v in value)):
            raise fail(key, f'must be a list of two numbers [low, high], got {value!r}')
        return float(value[0]), float(value[1])

    def string_list(key: str) -> tuple[str, ...]:
        value = item[key]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise fail(key, f'must be a list of strings, got {value!r}')
        return tuple(value)

    _check_keys(item, required=_REQUIRED_INPUT_KEYS, optional=_OPTIONAL_INPUT_KEYS, where=label)
    dim = integer('dim')
    if dim is None:
        raise fail('dim', 'must be an integer, got None')
    msg_type = string('msg_type')
    values: dict[str, Any] = dict(
        name=string('name'), topic=string('topic'), msg_type=msg_type,
        fields=string_list('fields'), dim=dim, valid_range=pair('valid_range'),
        timeout_s=number('timeout_s'), window_s=number('window_s'),
        aggregations=string_list('aggregations'), policy=string('policy'))
    if values['valid_range'] is None:
        raise fail('valid_range', 'must be a list of two numbers [low, high], got None')
    if 'fill_value' in item:
        values['fill_value'] = number('fill_value')
    elif values['policy'] == 'fill':
        raise fail('fill_value', "missing (required when policy is 'fill')")
    # Inputs whose messages carry no header can only be stamped on arrival.
    values['stamp_source'] = (string('stamp_source') if 'stamp_source' in item else
                              'header' if msg_type in _MSG_TYPES_WITH_HEADER else 'receive')
    if 'qos' in item:
        values['qos'] = string('qos')
    for key in ('posinf_value', 'neginf_value'):
        if key in item:
            values[key] = number(key, allow_none=True)
    if 'sectors' in item:
        values['sectors'] = integer('sectors')
    if 'sector_span_deg' in item:
        values['sector_span_deg'] = pair('sector_span_deg')
    if 'blind_sector_value' in item:
        values['blind_sector_value'] = number('blind_sector_value', allow_none=True)
    if 'max_rate_hz' in item:
        values['max_rate_hz'] = number('max_rate_hz')
    if 'sensor_limits' in item:
        if not isinstance(item['sensor_limits'], bool):
            raise fail('sensor_limits', f"must be true or false, got {item['sensor_limits']!r}")
        values['sensor_limits'] = item['sensor_limits']
    return InputSpec(**values)


def _check_input(spec: InputSpec, source: str, index: int) -> None:
    """Semantic checks of one input (types are assumed right when built by ``from_dict``)."""
    label = (f"{source}: input '{spec.name}':" if isinstance(spec.name, str) and spec.name
             else f'{source}: inputs[{index}]:')

    def fail(key: str, problem: str) -> FeatureConfigError:
        return FeatureConfigError(f"{label} key '{key}': {problem}")

    if not isinstance(spec.name, str) or not _NAME_PATTERN.match(spec.name):
        raise fail('name', f'must start with a letter and hold only letters, digits and '
                           f'underscores (it prefixes feature names), got {spec.name!r}')
    if not isinstance(spec.topic, str) or not _TOPIC_PATTERN.match(spec.topic):
        raise fail('topic', f'not a valid ROS topic name: {spec.topic!r}')
    if spec.msg_type not in MSG_TYPES:
        raise fail('msg_type', f'unsupported {spec.msg_type!r} (supported: '
                               f'{", ".join(MSG_TYPES)})')
    readable = MSG_TYPES[spec.msg_type]
    if not spec.fields:
        raise fail('fields', 'at least one field is needed')
    for path in spec.fields:
        if path not in readable:
            raise fail('fields', f'{spec.msg_type} has no numeric field {path!r} '
                                 f'(readable: {", ".join(readable)})')
    if len(set(spec.fields)) != len(spec.fields):
        raise fail('fields', f'duplicate field in {list(spec.fields)}')
    sequence_fields = [path for path in spec.fields if readable[path] == _SEQUENCE]
    if sequence_fields and len(spec.fields) > 1:
        raise fail('fields', f'the array field {sequence_fields[0]!r} must be the only field')
    if not isinstance(spec.dim, int) or isinstance(spec.dim, bool) or spec.dim < 1:
        raise fail('dim', f'must be a positive integer, got {spec.dim!r}')
    if not sequence_fields and spec.dim != len(spec.fields):
        raise fail('dim', f'{len(spec.fields)} scalar field(s) yield {len(spec.fields)} '
                          f'value(s), but dim is {spec.dim}')
    low, high = spec.valid_range
    if not low < high:
        raise fail('valid_range', f'low must be below high, got {list(spec.valid_range)}')
    if not spec.window_s > 0 or not math.isfinite(spec.window_s):
        raise fail('window_s', f'must be positive and finite, got {spec.window_s!r}')
    if not spec.timeout_s > 0 or not math.isfinite(spec.timeout_s):
        raise fail('timeout_s', f'must be positive and finite, got {spec.timeout_s!r}')
    if spec.timeout_s > spec.window_s:
        # A fresh input must have a reading inside its window for mean/min/max/std to exist.
        raise fail('timeout_s', f'must not exceed window_s ({spec.window_s}), '
                                f'got {spec.timeout_s}')
    if not spec.aggregations:
        raise fail('aggregations', f'at least one of {list(AGGREGATIONS)} is needed')
    for agg in spec.aggregations:
        if agg not in AGGREGATIONS:
            raise fail('aggregations',
                       f'unknown aggregation {agg!r} (known: {list(AGGREGATIONS)})')
    canonical = tuple(agg for agg in AGGREGATIONS if agg in spec.aggregations)
    if tuple(spec.aggregations) != canonical:
        raise fail('aggregations', f'list each aggregation once, in the order '
                                   f'{list(AGGREGATIONS)}: expected {list(canonical)}, '
                                   f'got {list(spec.aggregations)}')
    if spec.policy not in POLICIES:
        raise fail('policy', f'must be one of {list(POLICIES)}, got {spec.policy!r}')
    if not _is_number(spec.fill_value) or not math.isfinite(spec.fill_value):
        raise fail('fill_value', f'must be a finite number, got {spec.fill_value!r}')
    if spec.stamp_source not in STAMP_SOURCES:
        raise fail('stamp_source', f'must be one of {list(STAMP_SOURCES)}, '
                                   f'got {spec.stamp_source!r}')
    if spec.stamp_source == 'header' and spec.msg_type not in _MSG_TYPES_WITH_HEADER:
        raise fail('stamp_source', f"{spec.msg_type} has no header; use 'receive'")
    if spec.qos not in QOS_PROFILES:
        raise fail('qos', f'must be one of {list(QOS_PROFILES)}, got {spec.qos!r}')
    for key, meaning in (('posinf_value', 'no return'), ('neginf_value', 'too close')):
        value = getattr(spec, key)
        if value is not None and not low <= value <= high:
            raise fail(key, f'{value} lies outside valid_range {list(spec.valid_range)}: every '
                            f'"{meaning}" would be rejected')
    if spec.sectors is not None:
        if spec.msg_type != 'sensor_msgs/msg/LaserScan' or spec.fields != ('ranges',):
            raise fail('sectors', "only a LaserScan input reading fields ['ranges'] has sectors")
        if not isinstance(spec.sectors, int) or isinstance(spec.sectors, bool) \
                or spec.sectors < 1:
            raise fail('sectors', f'must be a positive integer, got {spec.sectors!r}')
        if spec.dim != spec.sectors:
            raise fail('dim', f'must equal sectors ({spec.sectors}) for a sector-reduced scan, '
                              f'got {spec.dim}')
    if spec.sector_span_deg is not None:
        if spec.sectors is None:
            raise fail('sector_span_deg', 'only meaningful together with sectors')
        span_low, span_high = spec.sector_span_deg
        if not (-360.0 <= span_low < 360.0 and span_low < span_high <= span_low + 360.0):
            raise fail('sector_span_deg', 'must be [low, high] in degrees, -360 <= low < 360, '
                                          'low < high <= low + 360 (at most one turn), got '
                                          f'{list(spec.sector_span_deg)}')
    if spec.blind_sector_value is not None:
        if spec.sectors is None:
            raise fail('blind_sector_value', 'only meaningful together with sectors')
        if not low <= spec.blind_sector_value <= high:
            raise fail('blind_sector_value', f'{spec.blind_sector_value} lies outside '
                                             f'valid_range {list(spec.valid_range)}')
    if not _is_number(spec.max_rate_hz) or not 0 < spec.max_rate_hz < math.inf:
        raise fail('max_rate_hz', f'must be a positive number, got {spec.max_rate_hz!r}')


# --------------------------------------------------------------------------------------------
# From messages to value vectors
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _split_path(path: str) -> tuple[str, ...]:
    return tuple(path.split('.'))


def _read_field(msg: object, path: str) -> Any:
    value = msg
    for attribute in _split_path(path):
        value = getattr(value, attribute)
    return value


def extract_values(msg: object, spec: InputSpec) -> np.ndarray:
    """Read ``spec.fields`` from a message-like object and prepare them for the pipeline.

    Args:
        msg: an rclpy message, a rosbags-deserialised message, or any object with the same
            attributes (``types.SimpleNamespace`` in tests).
        spec: the input the message belongs to.

    Returns:
        float64 array (k,): the field values in ``spec.fields`` order, sequences flattened, then
        passed through :func:`prepare_values` (the message's own range limits, infinity
        mappings, LaserScan sectors). Not validated further: :meth:`FeaturePipeline.add` does
        that and reports why a reading is refused.

    Raises:
        ReadingRefused: see :func:`prepare_values`.
    """
    parts = []
    for path in spec.fields:
        value = _read_field(msg, path)
        if isinstance(value, (float, int)):
            parts.append(np.array((value,), dtype=np.float64))
        else:  # array.array from rclpy, numpy array from rosbags, list from tests
            parts.append(np.asarray(value, dtype=np.float64).reshape(-1))
    raw = parts[0] if len(parts) == 1 else np.concatenate(parts)
    extra: dict[str, Any] = {}
    if spec.limit_members is not None:
        _, low_member, high_member = spec.limit_members
        extra['limits'] = (float(_read_field(msg, low_member)),
                           float(_read_field(msg, high_member)))
    if spec.sectors is not None:
        extra.update(angle_min=float(msg.angle_min), angle_increment=float(msg.angle_increment))
    return prepare_values(raw, spec, **extra)


def prepare_values(raw: Any, spec: InputSpec, *, angle_min: float | None = None,
                   angle_increment: float | None = None,
                   limits: tuple[float, float] | None = None) -> np.ndarray:
    """Turn raw field values into the input's value vector: the one shared transformation.

    Both :func:`extract_values` (messages) and the simulator (raw readings) call this, so the node,
    bag extraction and simulated training data see identical numbers.

    * ``limits``: the (min, max) the message states for its measured field
      (``spec.limit_members``; None: not checked, as for the simulator's raw readings). REP 117:
      a finite value outside them is no measurement. A Range reading is then refused
      ('outside_sensor_limits'); a scan beam is unusable, as one outside ``valid_range``. Limits
      that are no interval (NaN, min above max) refuse a finite reading ('bad_sensor_limits'),
      except 0 and 0: a pair the driver never filled in, which states no limits (``valid_range``
      still applies). Infinities are never compared with the limits (a fixed-distance ranger
      states min == max and sends only them).
    * ``posinf_value``: +inf ("no return" in REP 117) becomes that value (usually the max range);
      ``neginf_value``: -inf ("too close to measure") becomes that one (usually the min range).
    * ``sectors`` (LaserScan ``ranges``): beam i at angle ``angle_min + i * angle_increment`` falls
      into one of ``sectors`` equal sectors spanning ``sector_span_deg`` (default: the whole scan),
      angles compared as directions (modulo 360 degrees: a [0, 2 pi) scan fits [-60, 60]);
      each sector yields the minimum of its beams that are finite and inside ``valid_range``
      (after the infinity mappings); a sector whose beams are all unusable yields
      ``blind_sector_value``, or NaN without one, which ``add`` then rejects ('blind_sector');
      and a sector no beam falls into is always NaN (an empty scan, a span the scan does not
      cover, a geometry that is not finite).

    Args:
        raw: array-like (k,) of raw values (float32 or float64).
        spec: the input.
        angle_min, angle_increment: scan geometry in radians; required when ``spec.sectors``.
        limits: see above.

    Returns:
        float64 array: (k,) unchanged apart from the infinity mappings, or (sectors,).

    Raises:
        ReadingRefused: with one of :data:`READING_REFUSALS` as its reason.
    """
    values = np.asarray(raw, dtype=np.float64).reshape(-1)
    outside_limits = None
    if limits is not None and spec.limit_members is not None:
        outside_limits = _outside_limits(values, spec, limits)
    if spec.posinf_value is not None:
        values = np.where(values == np.inf, spec.posinf_value, values)
    if spec.neginf_value is not None:
        values = np.where(values == -np.inf, spec.neginf_value, values)
    if spec.sectors is None:
        return values
    if angle_min is None or angle_increment is None:
        raise ValueError(f'input {spec.name!r} reduces a scan to sectors: angle_min and '
                         'angle_increment are required')
    if not (math.isfinite(angle_min) and math.isfinite(angle_increment)):
        return np.full(spec.sectors, np.nan)  # no beam has a direction: no sector a value
    # Cached per geometry (a lidar repeats its own): scans too long for any planar lidar (a
    # faulty or hostile publisher) are reduced without the cache, which would hold 32 of them.
    sector_beams = _sector_beams if values.shape[0] <= MAX_CACHED_BEAMS else _sector_beams_uncached
    beams, starts, occupied = sector_beams(values.shape[0], float(angle_min),
                                           float(angle_increment), spec.sectors,
                                           spec.sector_span_deg)
    low, high = spec.valid_range
    # Unusable beams become NaN, which fmin skips: a sector of NaN only (no usable beam) stays
    # NaN. Written into a copy: ``values`` may be the caller's array.
    masked = values.take(beams)
    masked[(masked < low) | (masked > high)] = np.nan  # NaN compares False: it stays NaN
    if outside_limits is not None:
        masked[outside_limits.take(beams)] = np.nan
    occupied_min = np.fmin.reduceat(masked, starts) if beams.shape[0] else masked
    if spec.blind_sector_value is not None:  # beams, none of them usable
        occupied_min[np.isnan(occupied_min)] = spec.blind_sector_value
    if occupied.shape[0] == spec.sectors:
        return occupied_min
    sector_min = np.full(spec.sectors, np.nan)  # a sector without beams has no value
    sector_min[occupied] = occupied_min
    return sector_min


def _outside_limits(values: np.ndarray, spec: InputSpec, limits: tuple[float, float]
                    ) -> np.ndarray | None:
    """For :func:`prepare_values`: bool (k,) of the finite measured values outside ``limits``
    for a scan (None if there are none, or no limits are stated); refuses, through
    :func:`check_limits`, a Range reading outside them and limits that are no interval."""
    low_limit, high_limit = limits
    if low_limit == 0 and high_limit == 0:  # never filled in
        return None
    field = spec.limit_members[0]
    index = spec.fields.index(field)  # a sequence is the only field: index 0, all values
    measured = values if len(spec.fields) == 1 else values[index:index + 1]
    finite = np.isfinite(measured)
    if not finite.any():  # REP 117's codes (and NaN): never compared with the limits
        return None
    if not low_limit <= high_limit:  # False for NaN too
        check_limits(_first(measured[finite]), low_limit, high_limit, field)  # refuses
    outside = finite & ((measured < low_limit) | (measured > high_limit))
    if not outside.any():
        return None
    if spec.sectors is None:  # a Range, or a whole scan as the input's values
        check_limits(_first(measured[outside]), low_limit, high_limit, field)  # refuses
    return outside


def check_limits(value: float, low_limit: float, high_limit: float, field: str) -> None:
    """REP 117 for one measured ``value`` against the limits its message states: ReadingRefused
    ('outside_sensor_limits') for a finite value outside them, ('bad_sensor_limits') for one
    against limits that are no interval (NaN, min above max; min == max is one: a fixed-distance
    ranger's, which sends only infinities). 0 and 0 state no limits; infinities and NaN are
    never compared. The one rule, for :func:`prepare_values` and the CDR reader's scalars."""
    if (low_limit == 0 and high_limit == 0) or not math.isfinite(value) \
            or low_limit <= value <= high_limit:
        return
    if not low_limit <= high_limit:
        raise ReadingRefused('bad_sensor_limits', f'the message states limits [{low_limit}, '
                                                  f'{high_limit}]: no interval')
    raise ReadingRefused('outside_sensor_limits', f'{field} {value} outside the message\'s own '
                                                  f'limits [{low_limit}, {high_limit}]')


def _first(values: np.ndarray) -> float:
    return float(values.reshape(-1)[0])


def _sector_beams_uncached(n_beams: int, angle_min: float, angle_increment: float,
                           sectors: int, span_deg: tuple[float, float] | None
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The beams of each sector, for ``np.fmin.reduceat`` (``_sector_beams``: the same, cached
    per scan geometry).

    Returns ``beams`` (m,): the indices of the m beams inside the span, sector by sector;
    ``starts`` (k,): where each of the k sectors holding a beam begins in ``beams``; and
    ``occupied`` (k,): those sectors' numbers.
    """
    angles = angle_min + angle_increment * np.arange(n_beams, dtype=np.float64)
    if span_deg is None:
        low, high = float(np.min(angles)), float(np.max(angles))
    else:
        low, high = math.radians(span_deg[0]), math.radians(span_deg[1])
        # Directions, not numbers: a scan over [0, 2 pi) (common on 360-degree lidars) must
        # meet a span of [-60, 60] degrees too. Each angle is taken modulo 2 pi into the
        # turn that starts just below the span.
        base = low - _SECTOR_EDGE_TOLERANCE
        angles = base + np.mod(angles - base, 2 * math.pi)
    if high > low:
        # Scan angles are float32 in the message: a beam meant to lie on an edge of the span may
        # miss it by a few 1e-8 rad, so edges get a tolerance far below any beam spacing.
        inside = ((angles >= low - _SECTOR_EDGE_TOLERANCE)
                  & (angles <= high + _SECTOR_EDGE_TOLERANCE))
        # A beam on a sector boundary belongs to the sector it opens, whatever the rounding.
        position = (angles - low) * (sectors / (high - low)) + _SECTOR_EDGE_TOLERANCE
        index = np.clip(np.floor(position).astype(np.int64), 0, sectors - 1)
        index[~inside] = -1
    else:  # a single beam: it is the whole span
        index = np.zeros(n_beams, dtype=np.int64)
    beams = np.flatnonzero(index >= 0)
    beams = beams[np.argsort(index[beams], kind='stable')]
    occupied, starts = np.unique(index[beams], return_index=True)
    for array in (beams, starts, occupied):
        array.flags.writeable = False
    return beams, starts, occupied


_sector_beams = functools.lru_cache(maxsize=32)(_sector_beams_uncached)


def message_stamp_ns(msg: object) -> int | None:
    """``msg.header.stamp`` as integer nanoseconds; None without a header or for a zero stamp."""
    header = getattr(msg, 'header', None)
    stamp = getattr(header, 'stamp', None)
    if stamp is None:
        return None
    stamp_ns = int(stamp.sec) * _NS_PER_S + int(stamp.nanosec)
    return stamp_ns or None


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TickResult:
    """The outcome of one tick.

    Attributes:
        stamp_ns: the tick time t.
        features: float64 (d,) in ``feature_names`` order, or None when the tick is skipped.
        skipped: True when an input with policy 'skip' was stale.
        stale_inputs: inputs with no reading stamped in (t - timeout, t] (never seen included).
        filled_inputs: stale inputs with policy 'fill' whose features hold ``fill_value``.
    """

    stamp_ns: int
    features: np.ndarray | None
    skipped: bool
    stale_inputs: tuple[str, ...]
    filled_inputs: tuple[str, ...]


@dataclass(frozen=True)
class InputStats:
    """Counters for one input since the pipeline was made (a snapshot).

    Attributes:
        accepted: readings buffered.
        rejected: reason -> readings refused for it.
        last_stamp_ns: stamp of the newest accepted reading (None before any, or after reset).
        ticks_skipped: ticks skipped because this input (policy 'skip') was stale.
        truncated_windows: ticks whose window had lost readings to a full buffer (the input came
            faster than its max_rate_hz, or readings were added far ahead of the ticks).
    """

    accepted: int
    rejected: dict[str, int]
    last_stamp_ns: int | None
    ticks_skipped: int
    truncated_windows: int


class _InputBuffer:
    """Time-ordered readings of one input in a preallocated linear buffer of twice the capacity.

    The live readings are ``stamps[start:end]`` and ``values[:, start:end]`` (component-major, so a
    window of one component is contiguous). When ``end`` reaches the end of the arrays the live
    block is copied back to the front: amortised O(1) appends, and every window is a plain view.
    """

    __slots__ = ('spec', 'name', 'fills', 'capacity', 'stamps', 'values', 'start', 'end',
                 'dummy', 'query', 'window_ns', 'timeout_ns', 'low', 'high', 'last_stamp',
                 'evicted_stamp', 'accepted', 'rejected', 'ticks_skipped', 'truncated_windows')

    def __init__(self, spec: InputSpec):
        self.spec = spec
        self.name = spec.name
        self.fills = spec.policy == 'fill'
        self.capacity = spec.buffer_capacity
        self.stamps = np.zeros(2 * self.capacity, dtype=np.int64)
        self.values = np.zeros((spec.dim, 2 * self.capacity), dtype=np.float64)
        self.dummy = np.zeros((spec.dim, 1), dtype=np.float64)  # stands in for a stale window
        self.query = np.zeros(2, dtype=np.int64)
        self.window_ns = spec.window_ns
        self.timeout_ns = spec.timeout_ns
        self.low, self.high = spec.valid_range
        self.accepted = 0
        self.rejected = {reason: 0 for reason in REJECTION_REASONS[1:]}
        self.ticks_skipped = 0
        self.truncated_windows = 0
        self.clear()

    def clear(self) -> None:
        self.start = 0
        self.end = 0
        self.last_stamp: int | None = None
        self.evicted_stamp: int | None = None  # newest stamp evicted by a full buffer

    def append(self, stamp_ns: int, values: np.ndarray) -> None:
        if self.end - self.start == self.capacity:
            self.evicted_stamp = int(self.stamps[self.start])
            self.start += 1
        if self.end == self.stamps.shape[0]:
            count = self.end - self.start
            self.stamps[:count] = self.stamps[self.start:self.end]
            self.values[:, :count] = self.values[:, self.start:self.end]
            self.start, self.end = 0, count
        self.stamps[self.end] = stamp_ns
        self.values[:, self.end] = values
        self.end += 1
        self.last_stamp = stamp_ns
        self.accepted += 1


class FeaturePipeline:
    """Validates and buffers readings; computes the feature vector at tick times.

    ``add`` may be called in any interleaving with ``tick``; a tick at t uses the readings stamped
    in (t - window, t] that have been added, so readings stamped after t wait for later ticks. The
    same (name, stamp, values) sequence and tick times give bitwise identical vectors.
    """

    def __init__(self, config: FeatureConfig):
        self.config = config
        self.feature_names = config.feature_names
        self.dim = len(self.feature_names)
        self.ticks_skipped = 0
        self.unknown_inputs: dict[str, int] = {}  # readings refused as 'unknown_input', by name
        self._max_lead_ns = _seconds_to_ns(config.max_stamp_lead_s)
        self._buffers = [_InputBuffer(spec) for spec in config.inputs]
        self._by_name = {buffer.spec.name: buffer for buffer in self._buffers}
        self._build_layout()

    def _build_layout(self) -> None:
        """Precompute where each input's components and each feature sit in the flat arrays.

        At a tick every input contributes ``dim`` component series to one flat array; each
        aggregation some input asks for is computed for all C components into its row of a
        (5 * C + 1,) stack whose last slot is a zero for the stale flags, and one gather index
        puts the features in order.
        """
        dims = [buffer.spec.dim for buffer in self._buffers]
        n_components = sum(dims)
        self._component_input = np.repeat(np.arange(len(dims)), dims)
        self._counts = np.ones(len(dims), dtype=np.int64)
        self._views: list[np.ndarray] = [buffer.dummy for buffer in self._buffers]
        gather = []
        self._fill_blocks: list[tuple[int, int, int | None]] = []  # (start, stop, flag position)
        component_offset = 0
        for buffer, dim in zip(self._buffers, dims):
            block_start = len(gather)
            for agg in buffer.spec.aggregations:
                row = AGGREGATIONS.index(agg) * n_components + component_offset
                gather.extend(range(row, row + dim))
            flag = None
            if buffer.spec.policy == 'fill':
                flag = len(gather)
                gather.append(len(AGGREGATIONS) * n_components)  # the constant zero slot
            self._fill_blocks.append((block_start, flag if flag is not None else len(gather),
                                      flag))
            component_offset += dim
        self._gather = np.asarray(gather, dtype=np.intp)
        # Rows last, mean, min, max, std of every component, then the zero slot for stale flags;
        # rows no input asks for stay zero and are never computed.
        self._stacked = np.zeros(len(AGGREGATIONS) * n_components + 1, dtype=np.float64)
        self._rows = {agg: self._stacked[row * n_components:(row + 1) * n_components]
                      for row, agg in enumerate(AGGREGATIONS)}
        self._needed = {agg for buffer in self._buffers for agg in buffer.spec.aggregations}
        assert len(gather) == self.dim

    # -- input ---------------------------------------------------------------------------------

    def add(self, name: str, stamp_ns: int, values: Any,
            received_ns: int | None = None) -> str | None:
        """Validate and buffer one reading.

        Args:
            name: the input's name.
            stamp_ns: integer nanoseconds (a float raises TypeError: time is never float here).
            values: array-like (dim,), e.g. from :func:`extract_values`.
            received_ns: when the reading arrived, on the clock of the stamps (header-stamped
                readings); a stamp more than ``config.max_stamp_lead_s`` after it is refused
                as 'future_stamp'. None: not checked.

        Returns:
            None if accepted, else the reason it was refused (one of ``REJECTION_REASONS``);
            refusals are counted per input (``unknown_inputs`` for names not in the config).
            Stamps must strictly increase per input: an equal or older stamp is 'out_of_order'.
        """
        stamp_ns = operator.index(stamp_ns)
        buffer = self._by_name.get(name)
        if buffer is None:
            self.unknown_inputs[name] = self.unknown_inputs.get(name, 0) + 1
            return 'unknown_input'
        if type(values) is np.ndarray and values.dtype == np.float64 and values.ndim == 1:
            array = values  # what extract_values returns: as is (append copies it)
        else:
            array = np.asarray(values, dtype=np.float64).reshape(-1)
        if array.shape[0] != buffer.spec.dim:
            reason = 'wrong_length'
        else:
            if buffer.spec.dim == 1:
                low = high = array.item()
            else:
                low, high = float(np.minimum.reduce(array)), float(np.maximum.reduce(array))
            if not (math.isfinite(low) and math.isfinite(high)):  # min/max propagate NaN
                # A scan's sector values are NaN only where no beam was usable, or none fell
                # (a scan that does not cover sector_span_deg; see prepare_values): not a
                # non-finite reading, a blind part of the scan.
                reason = 'non_finite' if buffer.spec.sectors is None else 'blind_sector'
            elif low < buffer.low or high > buffer.high:
                reason = 'out_of_range'
            elif received_ns is not None and stamp_ns - received_ns > self._max_lead_ns:
                reason = 'future_stamp'
            elif buffer.last_stamp is not None and stamp_ns <= buffer.last_stamp:
                reason = 'out_of_order'
            else:
                buffer.append(stamp_ns, array)
                return None
        buffer.rejected[reason] += 1
        return reason

    # -- output --------------------------------------------------------------------------------

    def tick(self, t_ns: int) -> TickResult:
        """The feature vector at time ``t_ns`` (integer nanoseconds).

        For each input, the window holds the readings stamped in (t - window, t]; 'last' is the
        newest of them. An input is stale when it has no reading stamped in (t - timeout, t];
        since timeout <= window, a fresh input always has a non-empty window.

        Returns:
            TickResult with features float64 (d,), or None if a 'skip' input is stale.
        """
        t = operator.index(t_ns)
        views = self._views
        counts = self._counts
        stale: list[str] = []
        filled: list[int] = []
        skip = False
        for index, buffer in enumerate(self._buffers):
            start, end = buffer.start, buffer.end
            query = buffer.query  # [t - window, t]: both bounds in one binary search
            window_start = query[0] = t - buffer.window_ns
            query[1] = t
            older, newer = buffer.stamps[start:end].searchsorted(query, 'right').tolist()
            if newer == 0:
                newest = None
            elif newer == end - start:  # the usual case: nothing stamped after t
                newest = buffer.last_stamp
            else:
                newest = int(buffer.stamps[start + newer - 1])
            # Counted before the staleness test: eviction alone may have emptied the window.
            if buffer.evicted_stamp is not None and buffer.evicted_stamp > window_start:
                buffer.truncated_windows += 1
            if newest is None or t - newest >= buffer.timeout_ns:
                stale.append(buffer.name)
                views[index] = buffer.dummy
                counts[index] = 1
                if buffer.fills:
                    filled.append(index)
                else:
                    skip = True
                continue
            views[index] = buffer.values[:, start + older:start + newer]
            counts[index] = newer - older
        if skip:
            self.ticks_skipped += 1
            for buffer in self._buffers:
                if not buffer.fills and buffer.name in stale:
                    buffer.ticks_skipped += 1
            return TickResult(t, None, True, tuple(stale), ())
        features = self._aggregate(views, counts)
        for index in filled:
            block_start, block_stop, flag = self._fill_blocks[index]
            features[block_start:block_stop] = self._buffers[index].spec.fill_value
            features[flag] = 1.0
        return TickResult(t, features, False, tuple(stale),
                          tuple(self._buffers[index].name for index in filled))

    def _aggregate(self, views: list[np.ndarray], counts: np.ndarray) -> np.ndarray:
        """All aggregations of all component series at once.

        ``views[i]`` is (dim_i, n_i); flattened and concatenated they form C series back to back.
        The arithmetic is that of ``np.mean`` / ``np.std`` (sum, divide by n; squared deviations
        from that mean, divide by n, sqrt), but the sums come from ``ufunc.reduceat``, whose
        summation order differs from ``np.sum``'s pairwise one: results agree with NumPy's to
        rounding (exactly when the sums are exact) and are bitwise reproducible for the same
        readings on the same NumPy build, wherever the readings sit in the buffers.
        """
        flat = np.concatenate(views, axis=None)
        lengths = counts[self._component_input]
        ends = lengths.cumsum()
        starts = ends - lengths
        rows, needed = self._rows, self._needed
        if 'last' in needed:
            np.take(flat, ends - 1, out=rows['last'])
        mean = rows['mean']
        if 'mean' in needed or 'std' in needed:
            np.add.reduceat(flat, starts, out=mean)
            np.true_divide(mean, lengths, out=mean)
        if 'min' in needed:
            np.minimum.reduceat(flat, starts, out=rows['min'])
        if 'max' in needed:
            np.maximum.reduceat(flat, starts, out=rows['max'])
        if 'std' in needed:
            std = rows['std']
            deviation = flat - mean.repeat(lengths)
            np.multiply(deviation, deviation, out=deviation)
            np.add.reduceat(deviation, starts, out=std)
            np.true_divide(std, lengths, out=std)
            np.sqrt(std, out=std)
        return self._stacked[self._gather]  # a fresh array: the caller may keep it

    # -- housekeeping --------------------------------------------------------------------------

    def reset(self, *, clear_stats: bool = False) -> None:
        """Forget every buffered reading (e.g. sim time jumped back on a bag loop).

        Counters are kept for diagnostics unless ``clear_stats``.
        """
        for buffer in self._buffers:
            buffer.clear()
            if clear_stats:
                buffer.accepted = buffer.ticks_skipped = buffer.truncated_windows = 0
                buffer.rejected = {reason: 0 for reason in buffer.rejected}
        if clear_stats:
            self.ticks_skipped = 0
            self.unknown_inputs.clear()

    def stats(self) -> dict[str, InputStats]:
        """A snapshot of the per-input counters, by input name."""
        return {buffer.spec.name: InputStats(
            accepted=buffer.accepted, rejected=dict(buffer.rejected),
            last_stamp_ns=buffer.last_stamp, ticks_skipped=buffer.ticks_skipped,
            truncated_windows=buffer.truncated_windows) for buffer in self._buffers}

    @property
    def buffer_nbytes(self) -> int:
        """Bytes held by the reading buffers: fixed at construction."""
        return sum(buffer.stamps.nbytes + buffer.values.nbytes + buffer.dummy.nbytes
                   for buffer in self._buffers)


def replay(pipeline: FeaturePipeline, readings: Iterable[tuple[int, str, int, Any]], *,
           first_tick_ns: int, stop_ns: int | None = None) -> Iterator[TickResult]:
    """Feed time-ordered readings and tick at ``config.rate_hz`` the way a live node would.

    The canonical offline interleaving (bag extraction, simulated data sets): tick t runs after
    every reading received at or before t and before any received later, exactly as a node
    whose timer fires at t has processed the messages that arrived by then.

    Args:
        pipeline: the pipeline to feed (its counters record the rejections).
        readings: (receive_ns, name, stamp_ns, values) with non-decreasing receive_ns; for
            header-stamped inputs stamp_ns is the header stamp, otherwise stamp_ns == receive_ns.
        first_tick_ns: the first tick time; later ticks follow every ``config.tick_period_ns``.
        stop_ns: tick up to this time after the readings end (default: the last receive time).

    Yields:
        One TickResult per tick, skipped ticks included.
    """
    period_ns = pipeline.config.tick_period_ns
    next_tick = operator.index(first_tick_ns)
    last_receive: int | None = None
    for receive_ns, name, stamp_ns, values in readings:
        if last_receive is not None and receive_ns < last_receive:
            raise ValueError(f'readings must come in receive order: {name!r} received at '
                             f'{receive_ns} ns after one received at {last_receive} ns')
        while next_tick < receive_ns:
            yield pipeline.tick(next_tick)
            next_tick += period_ns
        pipeline.add(name, stamp_ns, values, receive_ns)
        last_receive = receive_ns
    end = stop_ns if stop_ns is not None else last_receive
    while end is not None and next_tick <= end:
        yield pipeline.tick(next_tick)
        next_tick += period_ns
