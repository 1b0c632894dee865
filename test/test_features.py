"""Tests of the feature pipeline: config validation, extraction, aggregation, time, policies."""
from __future__ import annotations

import array
import copy
import math
import warnings
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from obstacle_classifier.features import (AGGREGATIONS, FeatureConfig, FeatureConfigError,
                                          FeaturePipeline, InputSpec, ReadingRefused,
                                          default_config_path, extract_values,
                                          load_default_config, message_stamp_ns,
                                          prepare_values, replay)

MS = 1_000_000
S = 1_000_000_000

DEFAULT_FEATURE_NAMES = (
    'range_front.last', 'range_front.mean', 'range_front.min', 'range_front.std',
    'range_left.last', 'range_left.mean', 'range_left.min', 'range_left.std',
    'range_right.last', 'range_right.mean', 'range_right.min', 'range_right.std',
    'imu[0].mean', 'imu[1].mean', 'imu[2].mean', 'imu[3].mean',
    'imu[0].std', 'imu[1].std', 'imu[2].std', 'imu[3].std',
    'speed.last', 'speed.mean', 'speed.std',
    'noise.mean', 'noise.max', 'noise.std', 'noise.stale',
    *(f'lidar[{i}].{agg}' for agg in ('last', 'mean', 'std') for i in range(24)),
    'lidar.stale',
)


def range_input(**overrides) -> dict:
    item = {
        'name': 'range_front', 'topic': 'sensors/range/front',
        'msg_type': 'sensor_msgs/msg/Range', 'fields': ['range'], 'dim': 1,
        'valid_range': [0.0, 4.0], 'posinf_value': 4.0, 'timeout_s': 0.25, 'window_s': 0.5,
        'aggregations': ['last', 'mean', 'min', 'max', 'std'], 'policy': 'skip',
    }
    item.update(overrides)
    return item


def imu_input(**overrides) -> dict:
    item = {
        'name': 'imu', 'topic': 'sensors/imu', 'msg_type': 'sensor_msgs/msg/Imu',
        'fields': ['linear_acceleration.x', 'linear_acceleration.y', 'linear_acceleration.z'],
        'dim': 3, 'valid_range': [-50.0, 50.0], 'timeout_s': 0.1, 'window_s': 0.5,
        'aggregations': list(AGGREGATIONS), 'policy': 'fill', 'fill_value': -1.0,
    }
    item.update(overrides)
    return item


def lidar_input(**overrides) -> dict:
    item = {
        'name': 'lidar', 'topic': 'sensors/scan', 'msg_type': 'sensor_msgs/msg/LaserScan',
        'fields': ['ranges'], 'sectors': 4, 'dim': 4, 'valid_range': [0.05, 12.0],
        'posinf_value': 12.0, 'timeout_s': 0.3, 'window_s': 0.5, 'aggregations': ['min'],
        'policy': 'skip',
    }
    item.update(overrides)
    return item


def speed_input(**overrides) -> dict:
    item = {
        'name': 'speed', 'topic': 'sensors/speed', 'msg_type': 'std_msgs/msg/Float64',
        'fields': ['data'], 'dim': 1, 'valid_range': [-1.0, 3.0], 'timeout_s': 0.2,
        'window_s': 0.5, 'aggregations': ['last'], 'policy': 'skip',
    }
    item.update(overrides)
    return item


def make_config(*inputs: dict, rate_hz: float = 20.0) -> FeatureConfig:
    return FeatureConfig.from_dict({'rate_hz': rate_hz, 'inputs': list(inputs)})


# -- configuration ------------------------------------------------------------------------------

def test_default_config_loads_with_stable_feature_names():
    config = load_default_config()
    assert default_config_path().name == 'features.yaml'
    assert config.source == str(default_config_path())
    assert config.rate_hz == 20
    assert config.input_names == ('range_front', 'range_left', 'range_right', 'imu', 'speed',
                                  'noise', 'lidar')
    assert all(spec.topic.startswith('sensors/') for spec in config.inputs)
    assert config.feature_names == DEFAULT_FEATURE_NAMES
    assert FeaturePipeline(config).dim == len(DEFAULT_FEATURE_NAMES) == 100
    assert config.tick_period_ns == 50 * MS
    lidar = config.input('lidar')
    assert (lidar.msg_type, lidar.sectors, lidar.dim) == ('sensor_msgs/msg/LaserScan', 24, 24)
    assert lidar.sector_span_deg == (-60.0, 60.0) and lidar.posinf_value == 12.0


def test_yaml_file_and_dict_give_the_same_config(tmp_path):
    data = {'rate_hz': 10, 'inputs': [range_input(), imu_input(), lidar_input()]}
    path = tmp_path / 'features.yaml'
    path.write_text(yaml.safe_dump(data))
    from_file = FeatureConfig.from_yaml(path)
    from_dict = FeatureConfig.from_dict(data)
    assert from_file.inputs == from_dict.inputs
    assert from_file.source == str(path)
    assert from_file.input('imu').stamp_source == 'header'   # default for messages with a header
    assert make_config(speed_input()).input('speed').stamp_source == 'receive'  # and without
    with pytest.raises(KeyError, match='range_front, imu, lidar'):
        from_file.input('sonar')


def _drop(key):
    def mutate(item):
        del item[key]
    return mutate


def _set(key, value):
    def mutate(item):
        item[key] = value
    return mutate


# (case id, base input, mutation, key the message must name)
INPUT_ERRORS = [
    ('unknown key', range_input, _set('colour', 'red'), 'colour'),
    ('missing key', range_input, _drop('window_s'), 'window_s'),
    ('missing fields', range_input, _drop('fields'), 'fields'),
    ('dim not int', range_input, _set('dim', 'one'), 'dim'),
    ('dim bool', range_input, _set('dim', True), 'dim'),
    ('dim zero', range_input, _set('dim', 0), 'dim'),
    ('window not number', range_input, _set('window_s', 'fast'), 'window_s'),
    ('fields not list', range_input, _set('fields', 'range'), 'fields'),
    ('valid_range short', range_input, _set('valid_range', [0.0]), 'valid_range'),
    ('valid_range reversed', range_input, _set('valid_range', [4.0, 0.0]), 'valid_range'),
    ('empty aggregations', range_input, _set('aggregations', []), 'aggregations'),
    ('unknown aggregation', range_input, _set('aggregations', ['median']), 'aggregations'),
    ('aggregations out of order', range_input, _set('aggregations', ['max', 'min']),
     'aggregations'),
    ('duplicate aggregation', range_input, _set('aggregations', ['min', 'min']), 'aggregations'),
    ('window zero', range_input, _set('window_s', 0), 'window_s'),
    ('window negative', range_input, _set('window_s', -0.5), 'window_s'),
    ('timeout beyond window', range_input, _set('timeout_s', 0.6), 'timeout_s'),
    ('timeout zero', range_input, _set('timeout_s', 0.0), 'timeout_s'),
    ('sectors dim mismatch', lidar_input, _set('dim', 8), 'dim'),
    ('sectors on a Range', range_input, _set('sectors', 4), 'sectors'),
    ('sector span without sectors', range_input, _set('sector_span_deg', [-90, 90]),
     'sector_span_deg'),
    ('sector span beyond a turn', lidar_input, _set('sector_span_deg', [-180, 270]),
     'sector_span_deg'),
    ('sector span starting at 360', lidar_input, _set('sector_span_deg', [360, 400]),
     'sector_span_deg'),
    ('scalar fields dim mismatch', imu_input, _set('dim', 4), 'dim'),
    ('array field not alone', lidar_input, _set('fields', ['ranges', 'intensities']), 'fields'),
    ('unknown msg_type', range_input, _set('msg_type', 'sensor_msgs/msg/Sonar'), 'msg_type'),
    ('field not in msg', range_input, _set('fields', ['distance']), 'fields'),
    ('bad policy', range_input, _set('policy', 'drop'), 'policy'),
    ('fill without fill_value', range_input, _set('policy', 'fill'), 'fill_value'),
    ('fill_value not finite', imu_input, _set('fill_value', math.inf), 'fill_value'),
    ('header stamp without header', speed_input, _set('stamp_source', 'header'),
     'stamp_source'),
    ('bad stamp source', range_input, _set('stamp_source', 'gps'), 'stamp_source'),
    ('posinf outside valid range', range_input, _set('posinf_value', 5.0), 'posinf_value'),
    ('bad topic', range_input, _set('topic', 'sensors//front'), 'topic'),
    ('bad name', range_input, _set('name', 'range front'), 'name'),
    ('bad qos', range_input, _set('qos', 'best_effort'), 'qos'),
    ('max rate zero', range_input, _set('max_rate_hz', 0), 'max_rate_hz'),
]


@pytest.mark.parametrize('base, mutate, key', [case[1:] for case in INPUT_ERRORS],
                         ids=[case[0] for case in INPUT_ERRORS])
def test_config_errors_name_file_input_and_key(tmp_path, base, mutate, key):
    item = base()
    mutate(item)
    name = item.get('name', 'inputs[1]')
    path = tmp_path / 'bad_features.yaml'
    path.write_text(yaml.safe_dump({'rate_hz': 20, 'inputs': [speed_input(), item]}))
    with pytest.raises(FeatureConfigError) as caught:
        FeatureConfig.from_yaml(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"'{key}'" in message
    assert f"{name}'" in message or 'inputs[1]' in message


@pytest.mark.parametrize('inputs, key, culprit', [
    ([range_input(), range_input(topic='sensors/range/other')], 'name', 'range_front'),
    ([range_input(), range_input(name='range_other')], 'topic', 'range_other'),
], ids=['duplicate name', 'duplicate topic'])
def test_duplicates_are_refused(tmp_path, inputs, key, culprit):
    path = tmp_path / 'dup.yaml'
    path.write_text(yaml.safe_dump({'rate_hz': 20, 'inputs': inputs}))
    with pytest.raises(FeatureConfigError, match=f"{culprit}.*'{key}'") as caught:
        FeatureConfig.from_yaml(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize('text, fragment', [
    ('rate_hz: 20\ninputs: []\ncolour: red\n', "'colour'"),
    ('rate_hz: 20\n', "'inputs'"),
    ('rate_hz: 0\ninputs: [{name: x}]\n', "input 'x': key 'topic': missing"),
    ('inputs: []\nrate_hz: 20\n', "'inputs'"),
    ('rate_hz: fast\ninputs: [{}]\n', "'name'"),
    ('inputs: {name: x}\nrate_hz: 20\n', "'inputs'"),
    ('- rate_hz: 20\n', 'top level'),
    ('rate_hz: 20\ninputs: [\n', 'not valid YAML'),
    ('rate_hz: 20\nrate_hz: 30\ninputs: []\n', 'duplicate key'),
    ('rate_hz: 20\ninputs: [17]\n', 'inputs[0]'),
], ids=['unknown top key', 'missing inputs', 'bad input first', 'empty inputs',
        'bad rate and inputs', 'inputs not list', 'list at top', 'syntax', 'duplicate yaml key',
        'input not mapping'])
def test_top_level_errors(tmp_path, text, fragment):
    path = tmp_path / 'top.yaml'
    path.write_text(text)
    with pytest.raises(FeatureConfigError) as caught:
        FeatureConfig.from_yaml(path)
    assert str(path) in str(caught.value)
    assert fragment in str(caught.value)


def test_rate_errors_and_missing_file(tmp_path):
    for rate in (0, -5, 'fast', math.nan, True):
        with pytest.raises(FeatureConfigError, match="'rate_hz'"):
            make_config(range_input(), rate_hz=rate)
    # Above 0.9 s, readings accepted that far ahead would push the windows out of the buffers.
    for lead in (0, -0.5, 'soon', math.inf, False, math.nan, 1.5):
        with pytest.raises(FeatureConfigError, match="'max_stamp_lead_s'"):
            FeatureConfig.from_dict({'rate_hz': 20, 'max_stamp_lead_s': lead,
                                     'inputs': [range_input()]})
    missing = tmp_path / 'nope.yaml'
    with pytest.raises(FeatureConfigError, match='nope.yaml: cannot read'):
        FeatureConfig.from_yaml(missing)


def test_numbers_in_exponent_notation_and_a_file_that_is_not_utf8(tmp_path):
    # YAML 1.1 (PyYAML) reads 5e-1 as the string '5e-1': "must be a number, got '5e-1'".
    text = yaml.safe_dump({'rate_hz': 20, 'inputs': [range_input()]}, sort_keys=False)
    path = tmp_path / 'exp.yaml'
    path.write_text(text.replace('window_s: 0.5', 'window_s: 5e-1').replace(
        'rate_hz: 20', 'rate_hz: 2e+1'))
    config = FeatureConfig.from_yaml(path)
    assert config.rate_hz == 20.0 and config.input('range_front').window_s == 0.5
    latin = tmp_path / 'latin.yaml'
    latin.write_bytes(b'\xff' + text.encode())
    with pytest.raises(FeatureConfigError, match=r'latin\.yaml: not UTF-8 text'):
        FeatureConfig.from_yaml(latin)


def test_direct_construction_is_validated_too():
    spec = InputSpec(name='range_front', topic='sensors/range/front',
                     msg_type='sensor_msgs/msg/Range', fields=('range',), dim=1,
                     valid_range=(0.0, 4.0), timeout_s=0.25, window_s=0.0, aggregations=('min',))
    with pytest.raises(FeatureConfigError, match="<dict>: input 'range_front': key 'window_s'"):
        FeatureConfig(inputs=(spec,), rate_hz=20.0)


def test_feature_names_for_vectors_and_fill_flags():
    config = make_config(range_input(aggregations=['mean']),
                         imu_input(aggregations=['mean', 'std']))
    assert config.feature_names == (
        'range_front.mean', 'imu[0].mean', 'imu[1].mean', 'imu[2].mean',
        'imu[0].std', 'imu[1].std', 'imu[2].std', 'imu.stale')
    assert make_config(range_input(aggregations=['mean'])).feature_names == ('range_front.mean',)


# -- extraction ---------------------------------------------------------------------------------

def range_msg(value: float, sec: int = 0, nanosec: int = 0) -> SimpleNamespace:
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec)),
                           range=value, min_range=0.02, max_range=4.0)


def test_extract_reads_dotted_fields_and_sequences():
    imu = SimpleNamespace(linear_acceleration=SimpleNamespace(x=0.5, y=-0.25, z=9.81),
                          angular_velocity=SimpleNamespace(x=0.0, y=0.0, z=0.1))
    spec = make_config(imu_input()).input('imu')
    values = extract_values(imu, spec)
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values, [0.5, -0.25, 9.81])
    array_spec = make_config({
        'name': 'wheels', 'topic': 'sensors/wheels', 'msg_type': 'std_msgs/msg/Float32MultiArray',
        'fields': ['data'], 'dim': 4, 'valid_range': [-5, 5], 'timeout_s': 0.1, 'window_s': 0.2,
        'aggregations': ['mean'], 'policy': 'skip', 'stamp_source': 'receive'}).input('wheels')
    message = SimpleNamespace(data=array.array('f', [1.0, 2.0, 3.0, 4.5]))
    np.testing.assert_array_equal(extract_values(message, array_spec), [1.0, 2.0, 3.0, 4.5])


def _same(a, b) -> bool:
    """Bit for bit: same dtype, shape and bytes (NaN payloads included)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_pipeline_add_takes_extracted_arrays_as_any_array_like():
    """``add`` with the float64 array extraction returns, with a list, or with float32 values:
    the same buffered readings and the same features."""
    config = load_default_config()
    spec = config.input('imu')
    ticks = []
    for convert in (lambda v: v, list, lambda v: v.astype(np.float32).astype(np.float64),
                    lambda v: v.reshape(1, -1)):
        pipeline = FeaturePipeline(config)
        for k in range(10):
            values = np.array([0.1 * k, -0.2, 9.8 + k / 7, 0.01 * k])
            assert pipeline.add('imu', S + k * 10 * MS, convert(values)) is None
        buffer = pipeline._by_name['imu']
        ticks.append(buffer.values[:, buffer.start:buffer.end].copy())
    assert _same(ticks[0], ticks[1]) and _same(ticks[0], ticks[3])
    assert ticks[2].shape == ticks[0].shape
    assert spec.dim == 4


def test_message_stamp_ns():
    assert message_stamp_ns(range_msg(1.0, sec=12, nanosec=345)) == 12 * S + 345
    assert message_stamp_ns(range_msg(1.0)) is None           # an unset stamp
    assert message_stamp_ns(SimpleNamespace(data=1.0)) is None  # std_msgs: no header


def test_posinf_maps_to_max_range_or_is_rejected():
    mapped = make_config(range_input()).input('range_front')
    values = extract_values(range_msg(math.inf), mapped)
    np.testing.assert_array_equal(values, [4.0])
    pipeline = FeaturePipeline(mapped_config := make_config(range_input()))
    assert pipeline.add('range_front', 1 * MS, values) is None
    assert mapped_config.input('range_front').posinf_value == 4.0
    # -inf ("too close" in REP 117) is mapped only by neginf_value (see below); without
    # posinf_value +inf is not mapped either.
    assert np.isneginf(extract_values(range_msg(-math.inf), mapped)).all()
    unmapped = make_config(range_input(posinf_value=None)).input('range_front')
    raw = extract_values(range_msg(math.inf), unmapped)
    pipeline = FeaturePipeline(make_config(range_input(posinf_value=None)))
    assert pipeline.add('range_front', 1 * MS, raw) == 'non_finite'


def test_neginf_maps_to_min_range_so_too_close_is_seen():
    # REP 117: -inf is "detected, but closer than the sensor can measure": the most urgent
    # reading there is. With neginf_value it reads as that distance, not as unusable.
    spec = make_config(range_input(neginf_value=0.0)).input('range_front')
    np.testing.assert_array_equal(extract_values(range_msg(-math.inf), spec), [0.0])
    np.testing.assert_array_equal(extract_values(range_msg(math.inf), spec), [4.0])
    lidar = make_config(lidar_input(neginf_value=0.05)).input('lidar')
    beams = [5.0, 3.0, -math.inf, 9.0, 7.0, 8.0, 6.0, 9.0, 9.0]
    np.testing.assert_array_equal(extract_values(scan_msg(beams), lidar), [3.0, 0.05, 7.0, 6.0])
    with pytest.raises(FeatureConfigError, match="'neginf_value'.*too close"):
        make_config(range_input(neginf_value=-1.0))


def scan_msg(ranges, angle_min_deg=-90.0, increment_deg=22.5, range_min=0.01,
             range_max=30.0) -> SimpleNamespace:
    return SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=0)),
        angle_min=float(np.float32(math.radians(angle_min_deg))),
        angle_increment=float(np.float32(math.radians(increment_deg))),
        range_min=float(np.float32(range_min)), range_max=float(np.float32(range_max)),
        ranges=array.array('f', ranges), intensities=array.array('f'))


def test_laserscan_sector_reduction():
    # 9 beams at -90, -67.5, ..., 90 degrees into 4 sectors of 45 degrees; the closing beam at
    # +90 belongs to the last sector. NaN, out-of-range (0.01 < 0.05) beams are ignored; +inf is
    # "no return" = 12 m.
    spec = make_config(lidar_input()).input('lidar')
    beams = [5.0, 3.0,                # sector 0: [-90, -45)
             math.nan, 0.01,          # sector 1: only unusable beams -> NaN
             math.inf, 7.5,           # sector 2
             math.inf, math.inf, 2.0]  # sector 3 (incl. +90)
    values = extract_values(scan_msg(beams), spec)
    assert values.shape == (4,)
    np.testing.assert_array_equal(values[[0, 2, 3]], [3.0, 7.5, 2.0])
    assert math.isnan(values[1])
    pipeline = FeaturePipeline(make_config(lidar_input()))
    assert pipeline.add('lidar', 1 * MS, values) == 'blind_sector'   # refused
    beams[2] = 1.25
    assert pipeline.add('lidar', 2 * MS, extract_values(scan_msg(beams), spec)) is None
    np.testing.assert_array_equal(pipeline.tick(2 * MS).features, [3.0, 1.25, 7.5, 2.0])


def test_blind_sector_value_stands_in_for_a_sector_without_a_usable_beam():
    # A glass door or a dusty window blinds a few beams: with blind_sector_value the scan
    # keeps its other sectors instead of being refused whole.
    beams = [5.0, 3.0, math.nan, 0.01, math.inf, 7.5, math.inf, math.inf, 2.0]
    spec = make_config(lidar_input(blind_sector_value=12.0)).input('lidar')
    np.testing.assert_array_equal(extract_values(scan_msg(beams), spec), [3.0, 12.0, 7.5, 2.0])
    # A sector no beam falls into is a span that does not fit the scan: still NaN (refused).
    wide = make_config(lidar_input(blind_sector_value=12.0, sectors=6, dim=6,
                                   sector_span_deg=[-135, 135])).input('lidar')
    np.testing.assert_array_equal(extract_values(scan_msg(beams), wide),
                                  [math.nan, 3.0, 12.0, 7.5, 12.0, 2.0])
    for item, fragment in ((lidar_input(blind_sector_value=20.0), 'outside valid_range'),
                           (range_input(blind_sector_value=1.0), 'only meaningful')):
        with pytest.raises(FeatureConfigError, match=fragment):
            make_config(item)


@pytest.mark.parametrize('angle_min_deg, increment_deg', [
    (math.nan, 22.5), (-90.0, math.nan), (-90.0, math.inf), (-math.inf, 22.5)])
def test_a_scan_without_a_finite_geometry_has_no_sector_values(angle_min_deg, increment_deg):
    # No beam has a direction: every sector is NaN (refused as blind_sector), quietly (a
    # RuntimeWarning from the angle arithmetic is an error in a node run with -W error).
    spec = make_config(lidar_input(blind_sector_value=12.0)).input('lidar')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        values = extract_values(scan_msg([5.0] * 9, angle_min_deg, increment_deg), spec)
    assert values.shape == (4,) and np.isnan(values).all()
    assert FeaturePipeline(make_config(lidar_input())).add('lidar', MS, values) == \
        'blind_sector'


def _range_with_limits(value, low, high):
    msg = range_msg(value, sec=1)
    msg.min_range, msg.max_range = low, high
    return msg


@pytest.mark.parametrize('value, low, high, reason', [
    (3.5, 0.02, 2.0, 'outside_sensor_limits'),   # beyond the max range the sensor states
    (0.1, 0.5, 4.0, 'outside_sensor_limits'),    # closer than it can measure, yet finite
    (1.0, 4.0, 0.02, 'bad_sensor_limits'),       # limits upside down
    (1.0, math.nan, 4.0, 'bad_sensor_limits'),
    (1.0, 0.3, 0.3, 'outside_sensor_limits'),  # a fixed-distance ranger sends infinities
])
def test_a_range_outside_the_limits_its_message_states_is_refused(value, low, high, reason):
    # REP 117: a finite range outside [min_range, max_range] is no measurement. Taken within
    # valid_range, an inverted pair (4.0, 0.02) with range 1.0 gave curb at p 0.97 every tick.
    spec = make_config(range_input()).input('range_front')
    with pytest.raises(ReadingRefused, match=reason) as refused:
        extract_values(_range_with_limits(value, low, high), spec)
    assert refused.value.reason == reason
    unchecked = make_config(range_input(sensor_limits=False)).input('range_front')
    np.testing.assert_array_equal(extract_values(_range_with_limits(value, low, high),
                                                 unchecked), [value])


def test_range_limits_leave_infinities_and_unset_limits_alone():
    spec = make_config(range_input(neginf_value=0.0)).input('range_front')
    # +inf is "no return", -inf "too close": REP 117's own codes, never compared
    assert extract_values(_range_with_limits(math.inf, 0.02, 2.0), spec).tolist() == [4.0]
    assert extract_values(_range_with_limits(-math.inf, 0.5, 2.0), spec).tolist() == [0.0]
    # A fixed-distance ranger (sensor_msgs/Range: min_range == max_range) sends only -inf
    # ("detected") and +inf ("nothing"): every reading was refused as bad_sensor_limits.
    assert extract_values(_range_with_limits(-math.inf, 0.3, 0.3), spec).tolist() == [0.0]
    assert extract_values(_range_with_limits(math.inf, 0.3, 0.3), spec).tolist() == [4.0]
    assert extract_values(_range_with_limits(math.inf, math.nan, 1.0), spec).tolist() == [4.0]
    # min 0 and max 0: a driver that never filled them in states no limits
    assert extract_values(_range_with_limits(3.5, 0.0, 0.0), spec).tolist() == [3.5]
    assert extract_values(_range_with_limits(2.0, 0.02, 2.0), spec).tolist() == [2.0]  # edges in
    # the limits bound the range alone, not the other fields read with it
    both = make_config(range_input(fields=['field_of_view', 'range'], dim=2,
                                   valid_range=[0.0, 4.0])).input('range_front')
    msg = _range_with_limits(1.5, 0.02, 2.0)
    msg.field_of_view = 3.0
    assert extract_values(msg, both).tolist() == [3.0, 1.5]
    with pytest.raises(FeatureConfigError, match="'sensor_limits': must be true or false"):
        make_config(range_input(sensor_limits='yes'))


def test_scan_beams_outside_the_scans_own_limits_are_unusable():
    spec = make_config(lidar_input()).input('lidar')
    beams = [5.0, 3.0, 1.0, 2.0, math.inf, 7.5, 9.0, math.inf, 2.0]
    # range_max 6 m: the 7.5 and 9.0 beams are not measurements, +inf still is "no return"
    values = extract_values(scan_msg(beams, range_max=6.0), spec)
    np.testing.assert_array_equal(values, [3.0, 1.0, 12.0, 2.0])
    # range_min 2.5 m: sector 1's beams (1.0, 2.0) are all unusable: a blind sector
    values = extract_values(scan_msg(beams, range_min=2.5), spec)
    assert np.isnan(values[1]) and values[0] == 3.0
    assert FeaturePipeline(make_config(lidar_input())).add('lidar', MS, values) == 'blind_sector'
    with pytest.raises(ReadingRefused, match='bad_sensor_limits'):
        extract_values(scan_msg(beams, range_min=10.0, range_max=5.0), spec)
    np.testing.assert_array_equal(extract_values(scan_msg(beams, range_min=0, range_max=0), spec),
                                  extract_values(scan_msg(beams, range_max=30.0), spec))


def test_laserscan_sector_span_ignores_beams_outside():
    # A 270-degree scanner; only the front 180 degrees, in 2 sectors, are used.
    spec = make_config(lidar_input(sectors=2, dim=2, sector_span_deg=[-90, 90])).input('lidar')
    angles = np.arange(-135, 136, 45)           # -135 ... 135: 7 beams
    beams = [0.5, 6.0, 5.0, 4.0, 3.0, 2.0, 0.7]  # the beams at +-135 are outside the span
    values = extract_values(scan_msg(beams, angle_min_deg=-135, increment_deg=45), spec)
    assert len(angles) == len(beams)
    np.testing.assert_array_equal(values, [5.0, 2.0])


def test_laserscan_over_0_to_2pi_meets_a_span_around_straight_ahead():
    # Many 360-degree lidars publish angles 0 ... 2 pi: the beams at 270 and 315 degrees are
    # the ones at -90 and -45, and a span of [-90, 90] must find them (and so must [270, 450]).
    beams = [4.0, 3.0, 2.0, 9.0, 9.0, 9.0, 1.0, 0.5]  # 0, 45, ..., 315 degrees
    for span in ([-90, 90], [270, 450]):
        spec = make_config(lidar_input(sectors=2, dim=2, sector_span_deg=span)).input('lidar')
        values = extract_values(scan_msg(beams, angle_min_deg=0, increment_deg=45), spec)
        # right half (-90 ... 0): beams at 270, 315, 0; left half (0 ... 90]: 45, 90
        np.testing.assert_array_equal(values, [0.5, 2.0])


@settings(max_examples=150, deadline=None)
@given(beams=st.integers(1, 400), angle_min=st.floats(-3.25, 0.5, width=32),
       increment=st.floats(-0.015625, 0.046875, width=32) | st.just(0.0),
       sectors=st.integers(1, 30),
       span=st.none() | st.tuples(st.floats(-360, 0), st.floats(0.5, 360)).filter(
           lambda span: span[1] - span[0] <= 360),
       seed=st.integers(0, 2 ** 32 - 1))
def test_sector_minima_equal_a_beam_by_beam_reduction(beams, angle_min, increment, sectors,
                                                      span, seed):
    """Each sector's value is the min of its usable beams (NaN if none), the beam's sector
    following the rule in prepare_values' docstring, computed one beam at a time."""
    extra = {'sector_span_deg': list(span)} if span else {}
    spec = make_config(lidar_input(sectors=sectors, dim=sectors, **extra)).input('lidar')
    rng = np.random.default_rng(seed)
    ranges = rng.uniform(-1.0, 15.0, beams).astype(np.float32)
    ranges[rng.random(beams) < 0.1] = np.inf
    ranges[rng.random(beams) < 0.05] = np.nan
    got = prepare_values(ranges, spec, angle_min=angle_min, angle_increment=increment)

    angles = [angle_min + increment * i for i in range(beams)]
    tolerance = 1e-6
    if span is None:
        low, high = min(angles), max(angles)
    else:  # directions: each angle modulo 2 pi into the turn starting just below the span
        low, high = math.radians(span[0]), math.radians(span[1])
        angles = [low - tolerance + (angle - (low - tolerance)) % (2 * math.pi)
                  for angle in angles]
    minima = [math.inf] * sectors
    for angle, value in zip(angles, ranges.tolist()):
        value = 12.0 if value == math.inf else value  # posinf_value
        if high > low:
            if not low - tolerance <= angle <= high + tolerance:
                continue
            sector = min(max(math.floor((angle - low) * (sectors / (high - low)) + tolerance),
                             0), sectors - 1)
        else:
            sector = 0
        if 0.05 <= value <= 12.0:
            minima[sector] = min(minima[sector], value)
    expected = [math.nan if value == math.inf else value for value in minima]
    np.testing.assert_array_equal(got, expected)


def test_prepare_values_is_the_shared_path():
    spec = make_config(lidar_input()).input('lidar')
    beams = np.array([5.0, 3.0, 1.0, 2.0, np.inf, 7.5, 9.0, np.inf, 2.0], dtype=np.float32)
    geometry = dict(angle_min=float(np.float32(-math.pi / 2)),
                    angle_increment=float(np.float32(math.pi / 8)))
    direct = prepare_values(beams, spec, **geometry)
    via_message = extract_values(scan_msg(beams.tolist()), spec)
    np.testing.assert_array_equal(direct, via_message)
    with pytest.raises(ValueError, match='angle_min'):
        prepare_values(beams, spec)


# -- the pipeline ---------------------------------------------------------------------------------

def test_every_aggregation_equals_numpy():
    config = make_config(imu_input(window_s=1.0, timeout_s=0.5))
    pipeline = FeaturePipeline(config)
    rng = np.random.default_rng(7)
    # Multiples of 1/8 with few bits: every partial sum is exact, so any summation order gives
    # NumPy's result to the last bit (random floats agree to rounding: see the property test).
    values = rng.integers(-80, 80, (40, 3)) / 8.0
    stamps = np.sort(rng.choice(np.arange(1, 2 * S, MS), 40, replace=False))
    for stamp, row in zip(stamps, values):
        assert pipeline.add('imu', int(stamp), row) is None
    t = int(stamps[-5])
    window = values[(stamps > t - S) & (stamps <= t)]
    result = pipeline.tick(t)
    features = dict(zip(config.feature_names, result.features))
    for i in range(3):
        column = window[:, i]
        expected = {'last': column[-1], 'mean': np.mean(column), 'min': np.min(column),
                    'max': np.max(column), 'std': np.std(column)}
        for agg, value in expected.items():
            assert features[f'imu[{i}].{agg}'] == value, (i, agg)   # bit for bit
    assert features['imu.stale'] == 0.0
    assert result.stale_inputs == () and not result.skipped


def test_window_is_open_at_start_and_closed_at_t():
    pipeline = FeaturePipeline(make_config(range_input(aggregations=['min', 'max'],
                                                       timeout_s=0.5)))
    t = 10 * S
    window = 500 * MS
    pipeline.add('range_front', t - window, [0.5])        # exactly t - window: outside
    pipeline.add('range_front', t - window + 1, [1.0])    # just inside
    pipeline.add('range_front', t, [2.0])                 # at t: inside
    pipeline.add('range_front', t + 1, [3.0])             # after t: not yet
    np.testing.assert_array_equal(pipeline.tick(t).features, [1.0, 2.0])
    np.testing.assert_array_equal(pipeline.tick(t + 1).features, [2.0, 3.0])  # 1.0 left
    np.testing.assert_array_equal(pipeline.tick(t - 1).features, [0.5, 1.0])  # earlier is fine


def test_future_readings_stay_buffered():
    pipeline = FeaturePipeline(make_config(range_input(aggregations=['last', 'mean'])))
    for k in range(5):
        pipeline.add('range_front', 1 * S + k * 40 * MS, [float(k)])
    early = pipeline.tick(1 * S + 50 * MS)   # sees readings 0 and 1 only
    np.testing.assert_array_equal(early.features, [1.0, 0.5])
    late = pipeline.tick(1 * S + 200 * MS)   # later ticks see the rest
    np.testing.assert_array_equal(late.features, [4.0, 2.0])
    assert pipeline.stats()['range_front'].accepted == 5


def test_staleness_and_skip_policy():
    pipeline = FeaturePipeline(make_config(range_input(aggregations=['last']),
                                           speed_input(timeout_s=0.25)))
    never = pipeline.tick(1 * S)
    assert never.skipped and never.features is None
    assert never.stale_inputs == ('range_front', 'speed') and never.filled_inputs == ()
    pipeline.add('range_front', 1 * S, [1.0])
    pipeline.add('speed', 1 * S, [0.5])
    timeout = 250 * MS
    assert not pipeline.tick(1 * S + timeout - 1).skipped    # age just below the timeout
    at_timeout = pipeline.tick(1 * S + timeout)              # no reading in (t - timeout, t]
    assert at_timeout.skipped and at_timeout.stale_inputs == ('range_front', 'speed')
    pipeline.add('speed', 1 * S + 200 * MS, [0.6])
    only_range = pipeline.tick(1 * S + timeout)
    assert only_range.stale_inputs == ('range_front',)
    assert pipeline.ticks_skipped == 3
    stats = pipeline.stats()
    assert stats['range_front'].ticks_skipped == 3 and stats['speed'].ticks_skipped == 2


def test_fill_policy_fills_and_flags():
    config = make_config(range_input(aggregations=['mean']), imu_input(aggregations=['max']))
    pipeline = FeaturePipeline(config)
    pipeline.add('range_front', 1 * S, [2.0])
    filled = pipeline.tick(1 * S)
    assert not filled.skipped
    assert filled.stale_inputs == ('imu',) and filled.filled_inputs == ('imu',)
    np.testing.assert_array_equal(filled.features, [2.0, -1.0, -1.0, -1.0, 1.0])
    pipeline.add('imu', 1 * S, [0.1, 0.2, 0.3])
    fresh = pipeline.tick(1 * S)
    np.testing.assert_array_equal(fresh.features, [2.0, 0.1, 0.2, 0.3, 0.0])
    assert fresh.stale_inputs == () and fresh.filled_inputs == ()
    assert pipeline.ticks_skipped == 0


def test_every_rejection_reason_is_counted():
    pipeline = FeaturePipeline(make_config(range_input(), imu_input()))
    assert pipeline.add('sonar', 1, [1.0]) == 'unknown_input'
    assert pipeline.add('imu', 1, [1.0, 2.0]) == 'wrong_length'
    assert pipeline.add('imu', 1, np.ones((2, 2))) == 'wrong_length'
    assert pipeline.add('imu', 1, [1.0, math.nan, 2.0]) == 'non_finite'
    assert pipeline.add('range_front', 1, [-math.inf]) == 'non_finite'
    assert pipeline.add('range_front', 1, [math.nan]) == 'non_finite'
    assert pipeline.add('imu', 1, [1.0, 60.0, 2.0]) == 'out_of_range'
    assert pipeline.add('range_front', 1, [-0.1]) == 'out_of_range'
    assert pipeline.add('range_front', 10, [1.0]) is None
    assert pipeline.add('range_front', 10, [1.0]) == 'out_of_order'   # same stamp again
    assert pipeline.add('range_front', 9, [1.0]) == 'out_of_order'
    assert pipeline.add('range_front', 11, 1.5) is None                # a scalar is fine at dim 1
    # A header stamp further ahead of its receive time than max_stamp_lead_s (0.5 s)
    assert pipeline.add('range_front', 12 + S // 2 + 1, [1.0], received_ns=12) == 'future_stamp'
    assert pipeline.add('range_front', 12 + S // 2, [1.0], received_ns=12) is None
    stats = pipeline.stats()
    assert stats['imu'].rejected == {'wrong_length': 2, 'non_finite': 1, 'out_of_range': 1,
                                     'future_stamp': 0, 'out_of_order': 0, 'blind_sector': 0}
    assert stats['range_front'].rejected == {'wrong_length': 0, 'non_finite': 2,
                                             'out_of_range': 1, 'future_stamp': 1,
                                             'out_of_order': 2, 'blind_sector': 0}
    assert stats['range_front'].accepted == 3
    assert stats['range_front'].last_stamp_ns == 12 + S // 2
    assert stats['imu'].accepted == 0 and stats['imu'].last_stamp_ns is None
    assert pipeline.unknown_inputs == {'sonar': 1}
    with pytest.raises(TypeError):
        pipeline.add('range_front', 12.0, [1.0])   # float time never enters the pipeline
    with pytest.raises(TypeError):
        pipeline.tick(1.5e9)


def random_sequence(seed: int, seconds: int = 20):
    """Time-ordered (name, stamp, values) for the default config, plus tick times."""
    config = load_default_config()
    rng = np.random.default_rng(seed)
    rates = {'range_front': 25, 'range_left': 20, 'range_right': 20, 'imu': 100, 'speed': 50,
             'noise': 10, 'lidar': 10}
    events = []
    for spec in config.inputs:
        period = S // rates[spec.name]
        stamps = np.arange(1, seconds * S, period) + rng.integers(0, period // 5,
                                                                  seconds * rates[spec.name])
        low, high = spec.valid_range
        values = rng.uniform(low, high, (len(stamps), spec.dim))
        events += [(int(stamp), spec.name, row) for stamp, row in zip(stamps, values)]
    events.sort(key=lambda event: event[0])
    return config, events


def run_ticks(pipeline, events, period=50 * MS):
    """Interleave adds and ticks as a node does; return the tick vectors."""
    vectors = []
    next_tick = events[0][0] + period
    for stamp, name, values in events:
        while next_tick < stamp:
            result = pipeline.tick(next_tick)
            vectors.append(None if result.skipped else result.features)
            next_tick += period
        pipeline.add(name, stamp, values)
    return vectors


def test_bitwise_determinism_and_independence_from_history():
    config, events = random_sequence(seed=3)
    first = run_ticks(FeaturePipeline(config), events)
    second = run_ticks(FeaturePipeline(config), events)
    assert len(first) == len(second) > 300
    for a, b in zip(first, second):
        assert (a is None and b is None) or a.tobytes() == b.tobytes()
    # A pipeline that starts 12 s later holds the same readings at different buffer offsets:
    # once its windows are full, its vectors are the same bits.
    late = FeaturePipeline(config)
    start = 12 * S
    for stamp, name, values in events:
        if stamp > start:
            late.add(name, stamp, values)
    full = FeaturePipeline(config)
    for stamp, name, values in events:
        full.add(name, stamp, values)
    for t in range(start + 2 * S, 20 * S, 37 * MS):
        assert late.tick(t).features.tobytes() == full.tick(t).features.tobytes()


@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.tuples(st.integers(1, 3 * S), st.floats(-40, 40), st.floats(-40, 40)),
                     min_size=1, max_size=80),
       t=st.integers(0, 3 * S))
def test_property_tick_equals_numpy_on_the_window(data, t):
    config = make_config(imu_input(fields=['linear_acceleration.x', 'linear_acceleration.z'],
                                   dim=2, window_s=0.7, timeout_s=0.7, policy='skip'))
    pipeline = FeaturePipeline(config)
    readings = sorted({stamp: (x, z) for stamp, x, z in data}.items())
    for stamp, values in readings:
        assert pipeline.add('imu', stamp, values) is None
    stamps = np.array([stamp for stamp, _ in readings])
    values = np.array([value for _, value in readings])
    inside = (stamps > t - 700 * MS) & (stamps <= t)
    result = pipeline.tick(t)
    if not inside.any():
        assert result.skipped and result.stale_inputs == ('imu',)
        return
    window = values[inside]
    expected = np.concatenate([window[-1], [np.mean(window[:, i]) for i in range(2)],
                               window.min(axis=0), window.max(axis=0),
                               [np.std(window[:, i]) for i in range(2)]])
    # last, min, max are exact; mean and std agree to rounding (summation order differs)
    np.testing.assert_allclose(result.features, expected, rtol=1e-13, atol=1e-13)
    last_min_max = np.r_[0:2, 4:8]
    np.testing.assert_array_equal(result.features[last_min_max], expected[last_min_max])


def test_memory_is_bounded():
    config = make_config(range_input(max_rate_hz=250), imu_input(max_rate_hz=250))
    pipeline = FeaturePipeline(config)
    nbytes = pipeline.buffer_nbytes
    period = 5 * MS   # 200 Hz, within the declared maximum

    def feed(first: int, stop: int) -> None:
        for k in range(first, stop):
            pipeline.add('range_front', (k + 1) * period, [float(k % 4)])
            if k % 10 == 0:
                pipeline.tick((k + 1) * period)

    # Untraced warm-up: the buffers wrap many times and CPython's free lists fill.
    feed(0, 60_000)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        feed(60_000, 100_000)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pipeline.buffer_nbytes == nbytes
    assert after - before < 10_000
    stats = pipeline.stats()['range_front']
    assert stats.accepted == 100_000 and stats.truncated_windows == 0


def test_readings_beyond_the_declared_rate_are_reported_not_hoarded():
    pipeline = FeaturePipeline(make_config(range_input(max_rate_hz=20, aggregations=['mean'])))
    capacity = pipeline.config.input('range_front').buffer_capacity
    nbytes = pipeline.buffer_nbytes
    for k in range(1, 10 * capacity):   # 1 kHz into a buffer sized for 20 Hz
        pipeline.add('range_front', k * MS, [1.0])
    assert pipeline.buffer_nbytes == nbytes
    result = pipeline.tick(10 * capacity * MS)
    assert not result.skipped
    assert pipeline.stats()['range_front'].truncated_windows == 1


def test_a_window_emptied_by_eviction_counts_as_truncated():
    # Readings added far ahead of the ticks push out the one the tick would have used: the
    # tick finds the input stale, and the counters say why.
    pipeline = FeaturePipeline(make_config(range_input(max_rate_hz=10)))
    capacity = pipeline.config.input('range_front').buffer_capacity
    for k in range(capacity + 5):
        pipeline.add('range_front', 100 * MS + k * 10 * MS, [1.0])
    assert pipeline.tick(100 * MS).skipped
    stats = pipeline.stats()['range_front']
    assert stats.ticks_skipped == 1 and stats.truncated_windows == 1


def test_one_stamp_from_the_future_does_not_block_the_input():
    # A sensor clock glitch: one reading stamped an hour ahead. Accepted, it would make every
    # later (correct) reading 'out_of_order' for that hour.
    pipeline = FeaturePipeline(make_config(range_input()))
    assert pipeline.add('range_front', 3600 * S, [1.0], received_ns=S) == 'future_stamp'
    for k in range(1, 6):
        assert pipeline.add('range_front', S + k * MS, [2.0], received_ns=S + k * MS) is None
    assert pipeline.tick(S + 5 * MS).features is not None
    events = [(S, 'range_front', 3600 * S, [1.0])] + [
        (S + k * MS, 'range_front', S + k * MS, [2.0]) for k in range(1, 6)]
    replayed = FeaturePipeline(make_config(range_input()))  # replay checks it the same way
    results = list(replay(replayed, events, first_tick_ns=S + 5 * MS))
    assert not results[0].skipped and replayed.stats()['range_front'].rejected['future_stamp'] == 1


def test_reset_forgets_readings_but_keeps_counters():
    pipeline = FeaturePipeline(make_config(range_input(aggregations=['last'])))
    pipeline.add('range_front', 5 * S, [1.0])
    pipeline.add('range_front', 4 * S, [1.0])   # out of order
    pipeline.reset()
    assert pipeline.tick(5 * S).skipped           # the reading is gone
    assert pipeline.add('range_front', 1 * S, [3.0]) is None   # time may restart
    np.testing.assert_array_equal(pipeline.tick(1 * S).features, [3.0])
    stats = pipeline.stats()['range_front']
    assert stats.accepted == 2 and stats.rejected['out_of_order'] == 1
    assert stats.ticks_skipped == 1 and stats.last_stamp_ns == 1 * S
    pipeline.reset(clear_stats=True)
    stats = pipeline.stats()['range_front']
    assert (stats.accepted, stats.ticks_skipped, stats.last_stamp_ns) == (0, 0, None)
    assert pipeline.ticks_skipped == 0


def test_replay_ticks_like_a_node():
    config = make_config(range_input(aggregations=['last']), rate_hz=10)
    readings = [(100 * MS, 'range_front', 90 * MS, [1.0]),    # received exactly at a tick
                (150 * MS, 'range_front', 140 * MS, [2.0]),
                (420 * MS, 'range_front', 410 * MS, [3.0])]
    results = list(replay(FeaturePipeline(config), readings, first_tick_ns=100 * MS))
    assert [r.stamp_ns for r in results] == [100 * MS, 200 * MS, 300 * MS, 400 * MS]
    # at 300 ms the 140 ms reading is 160 ms old (fresh); at 400 ms it is 260 ms old (stale)
    assert [None if r.skipped else r.features[0] for r in results] == [1.0, 2.0, 2.0, None]
    results = list(replay(FeaturePipeline(config), readings, first_tick_ns=100 * MS,
                          stop_ns=500 * MS))
    assert results[-1].stamp_ns == 500 * MS and results[-1].features[0] == 3.0
    backwards = copy.deepcopy(readings)
    backwards[2] = (120 * MS, 'range_front', 410 * MS, [3.0])
    with pytest.raises(ValueError, match='receive order'):
        list(replay(FeaturePipeline(config), backwards, first_tick_ns=100 * MS))


def test_sector_layouts_of_huge_scans_are_not_cached():
    # A publisher of 1M-beam scans with a jittered angle_min grew a node by 148 MB in 12 scans:
    # the layout cache held 32 of them. Scans beyond any planar lidar are reduced uncached.
    from obstacle_classifier import features
    spec = make_config(lidar_input()).input('lidar')
    features._sector_beams.cache_clear()
    huge = np.full(features.MAX_CACHED_BEAMS + 1, 5.0, dtype=np.float32)
    for k in range(3):
        values = prepare_values(huge, spec, angle_min=-1.5 + k * 1e-6, angle_increment=1e-4)
        assert values.tolist() == [5.0] * 4
    assert features._sector_beams.cache_info().currsize == 0
    prepare_values(huge[:360], spec, angle_min=-1.5, angle_increment=0.01)
    assert features._sector_beams.cache_info().currsize == 1
