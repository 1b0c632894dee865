"""cdr_reader against rclpy's own serialisation: the same stamp and values as extract_values of
the deserialised message, for every supported type, field, alignment and byte order."""
from __future__ import annotations

import importlib
import math
import re

import numpy as np
import pytest
import ros_helpers
from hypothesis import given, settings
from hypothesis import strategies as st

ros_helpers.import_rclpy()  # before anything loads message type support (warning filter)

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from obstacle_classifier.cdr import (LAYOUTS, CdrError, UnsupportedEncapsulation,  # noqa: E402
                                     cdr_reader, encapsulation_byte_order)
from obstacle_classifier.features import (MSG_TYPES, FeatureConfig,  # noqa: E402
                                          ReadingRefused, extract_values,
                                          load_default_config, message_stamp_ns)

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
FLOAT32 = st.floats(width=32)
FLOAT64 = st.floats()
FRAME_IDS = st.text(alphabet='abcdefgh_/', max_size=9)  # every string length modulo 8


def message_class(msg_type: str) -> type:
    package, _, name = msg_type.split('/')
    return getattr(importlib.import_module(f'{package}.msg'), name)


def input_spec(msg_type: str, fields: list[str], *, sectors: int | None = None,
               posinf_value: float | None = None, neginf_value: float | None = None):
    entry = {'name': 'x', 'topic': 'x', 'msg_type': msg_type, 'fields': fields,
             'dim': sectors or len(fields), 'valid_range': [-1e9, 1e9], 'timeout_s': 0.1,
             'window_s': 0.1, 'aggregations': ['last'], 'policy': 'skip',
             'stamp_source': 'header' if msg_type.startswith('sensor_msgs') else 'receive'}
    if sectors is not None:
        entry.update(sectors=sectors, valid_range=[0.05, 12.0])
    if posinf_value is not None:
        entry['posinf_value'] = posinf_value
    if neginf_value is not None:
        entry['neginf_value'] = neginf_value
    return FeatureConfig.from_dict({'rate_hz': 10, 'inputs': [entry]}).input('x')


def big_endian(data: bytes, msg_type: str) -> bytes:
    """The same message serialised big-endian (rosbags, an independent CDR implementation)."""
    message = TYPESTORE.deserialize_cdr(data, msg_type)
    return bytes(TYPESTORE.serialize_cdr(message, msg_type, little_endian=False))


def assert_reads_like_extract_values(data: bytes, msg_type: str, spec) -> None:
    """The same stamp and values, or the same refusal (ReadingRefused and its reason)."""
    msg = deserialize_message(data, message_class(msg_type))
    read = cdr_reader(spec)
    try:
        expected = extract_values(msg, spec)
    except ReadingRefused as refused:
        for encoded in (data, big_endian(data, msg_type)):
            with pytest.raises(ReadingRefused) as info:
                read(encoded)
            assert info.value.reason == refused.reason
        return
    expected_stamp = message_stamp_ns(msg)
    for encoded in (data, big_endian(data, msg_type)):
        stamp_ns, values = read(encoded)
        assert stamp_ns == expected_stamp
        assert values.dtype == np.float64 and values.shape == expected.shape
        np.testing.assert_array_equal(values, expected)  # NaN == NaN here


def with_header(msg, frame_id: str, sec: int, nanosec: int):
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    return msg


STAMPS = dict(frame_id=FRAME_IDS, sec=st.integers(-2 ** 31, 2 ** 31 - 1) | st.just(0),
              nanosec=st.integers(0, 999_999_999) | st.just(0))


def _flatten(msg_class, prefix: str = '') -> list[tuple[str, str]]:
    """(path, cdr kind) of every member of an rclpy message class, in wire order."""
    kinds = {'float': 'f', 'double': 'd', 'int32': 'i', 'uint32': 'I', 'uint8': 'B',
             'string': 'string', 'sequence<float>': 'float32[]',
             'sequence<std_msgs/MultiArrayDimension>': 'dimensions'}
    members = []
    for name, kind in msg_class.get_fields_and_field_types().items():
        path = prefix + name
        fixed_array = re.fullmatch(r'(\w+)\[(\d+)\]', kind)
        if kind in kinds:
            members.append((path, kinds[kind]))
        elif fixed_array:
            members += [(f'{path}[{i}]', kinds[fixed_array[1]])
                        for i in range(int(fixed_array[2]))]
        else:
            package, name = kind.split('/')
            members += _flatten(message_class(f'{package}/msg/{name}'), path + '.')
    return members


@pytest.mark.parametrize('msg_type', sorted(MSG_TYPES))
def test_layouts_are_the_message_definitions(msg_type):
    assert list(LAYOUTS[msg_type]) == _flatten(message_class(msg_type))
    readable = {path for path, _ in LAYOUTS[msg_type]}
    assert set(MSG_TYPES[msg_type]) <= readable


@settings(max_examples=200, deadline=None)
@given(radiation=st.integers(0, 255), fov=FLOAT32, low=FLOAT32, high=FLOAT32, value=FLOAT32,
       posinf=st.none() | st.just(4.0), neginf=st.none() | st.just(0.0), **STAMPS)
def test_range(radiation, fov, low, high, value, posinf, neginf, frame_id, sec, nanosec):
    from sensor_msgs.msg import Range
    msg = with_header(Range(radiation_type=radiation, field_of_view=fov, min_range=low,
                            max_range=high, range=value), frame_id, sec, nanosec)
    data = bytes(serialize_message(msg))
    for fields in (['range'], ['max_range', 'range', 'field_of_view', 'min_range']):
        spec = input_spec('sensor_msgs/msg/Range', fields, posinf_value=posinf,
                          neginf_value=neginf)
        assert_reads_like_extract_values(data, 'sensor_msgs/msg/Range', spec)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(FLOAT64, min_size=10, max_size=10), **STAMPS)
def test_imu_members_after_the_covariances(values, frame_id, sec, nanosec):
    from sensor_msgs.msg import Imu
    msg = with_header(Imu(), frame_id, sec, nanosec)
    for axis, value in zip('xyzw', values[:4]):
        setattr(msg.orientation, axis, value)
    for axis, value in zip('xyz', values[4:7]):
        setattr(msg.angular_velocity, axis, value)
    for axis, value in zip('xyz', values[7:]):
        setattr(msg.linear_acceleration, axis, value)
    msg.angular_velocity_covariance[4] = 123.0
    data = bytes(serialize_message(msg))
    for fields in (['linear_acceleration.z', 'orientation.w', 'angular_velocity.x'],
                   sorted(MSG_TYPES['sensor_msgs/msg/Imu'])):
        spec = input_spec('sensor_msgs/msg/Imu', fields)
        assert_reads_like_extract_values(data, 'sensor_msgs/msg/Imu', spec)


@settings(max_examples=200, deadline=None)
@given(ranges=st.lists(FLOAT32, max_size=40), intensities=st.lists(FLOAT32, max_size=5),
       angle_min=FLOAT32, low=FLOAT32, high=FLOAT32, **STAMPS)
def test_laser_scan_sequences(ranges, intensities, angle_min, low, high, frame_id, sec,
                              nanosec):
    from sensor_msgs.msg import LaserScan
    msg = with_header(LaserScan(angle_min=angle_min, ranges=ranges, intensities=intensities,
                                range_min=low, range_max=high), frame_id, sec, nanosec)
    data = bytes(serialize_message(msg))
    for fields in (['ranges'], ['intensities']):
        spec = input_spec('sensor_msgs/msg/LaserScan', fields, posinf_value=12.0,
                          neginf_value=0.05)
        assert_reads_like_extract_values(data, 'sensor_msgs/msg/LaserScan', spec)


@settings(max_examples=150, deadline=None)
@given(beams=st.integers(1, 400), angle_min=st.floats(-3.0, 0.0, width=32),
       seed=st.integers(0, 2 ** 32 - 1), **STAMPS)
def test_laser_scan_sectors(beams, angle_min, seed, frame_id, sec, nanosec):
    from sensor_msgs.msg import LaserScan
    rng = np.random.default_rng(seed)
    ranges = rng.uniform(0.0, 14.0, beams).astype(np.float32)
    ranges[rng.random(beams) < 0.1] = np.inf
    increment = np.float32(-2.0 * angle_min / max(beams - 1, 1))
    msg = with_header(LaserScan(angle_min=angle_min, angle_increment=float(increment),
                                angle_max=-angle_min, ranges=ranges.tolist(),
                                range_min=0.1, range_max=13.0),
                      frame_id, sec, nanosec)
    data = bytes(serialize_message(msg))
    default_lidar = load_default_config().input('lidar')
    for spec in (default_lidar, input_spec('sensor_msgs/msg/LaserScan', ['ranges'], sectors=7)):
        assert_reads_like_extract_values(data, 'sensor_msgs/msg/LaserScan', spec)


@settings(max_examples=150, deadline=None)
@given(value32=FLOAT32, value64=FLOAT64,
       dims=st.lists(st.tuples(FRAME_IDS, st.integers(0, 2 ** 32 - 1),
                               st.integers(0, 2 ** 32 - 1)), max_size=3),
       offset=st.integers(0, 2 ** 32 - 1), data=st.lists(FLOAT32, max_size=6))
def test_std_msgs(value32, value64, dims, offset, data):
    from std_msgs.msg import Float32, Float32MultiArray, Float64, MultiArrayDimension
    cases = [(Float32(data=value32), 'std_msgs/msg/Float32', ['data']),
             (Float64(data=value64), 'std_msgs/msg/Float64', ['data'])]
    array = Float32MultiArray(data=data)
    array.layout.dim = [MultiArrayDimension(label=label, size=size, stride=stride)
                        for label, size, stride in dims]
    array.layout.data_offset = offset
    cases += [(array, 'std_msgs/msg/Float32MultiArray', ['data'])]
    for msg, msg_type, fields in cases:
        spec = input_spec(msg_type, fields)
        assert_reads_like_extract_values(bytes(serialize_message(msg)), msg_type, spec)


def test_default_config_inputs_and_zero_stamps():
    from sensor_msgs.msg import Range
    config = load_default_config()
    data = bytes(serialize_message(with_header(Range(range=math.inf), 'front', 0, 0)))
    stamp_ns, values = cdr_reader(config.input('range_front'))(data)
    assert stamp_ns is None  # as message_stamp_ns: a zero stamp is no stamp
    assert values.tolist() == [4.0]  # +inf is "no return": the max range
    data = bytes(serialize_message(with_header(Range(range=1.5), '', 0, 7)))
    assert cdr_reader(config.input('range_front'))(data) == (7, pytest.approx([1.5]))


def test_truncated_messages_raise_and_never_read_garbage():
    from sensor_msgs.msg import Imu, LaserScan, Range
    from std_msgs.msg import Float32MultiArray, MultiArrayDimension
    array = Float32MultiArray(data=[1.0, 2.0, 3.0])
    array.layout.dim = [MultiArrayDimension(label='rows', size=3, stride=3)]
    cases = [(with_header(Range(range=2.0), 'abc', 5, 6), 'sensor_msgs/msg/Range', ['range']),
             (with_header(Imu(), 'imu', 1, 2), 'sensor_msgs/msg/Imu',
              ['linear_acceleration.x', 'angular_velocity.z']),
             (with_header(LaserScan(ranges=[1.0, 2.0, 3.0], angle_increment=0.1), 'l', 1, 0),
              'sensor_msgs/msg/LaserScan', ['ranges']),
             (array, 'std_msgs/msg/Float32MultiArray', ['data'])]
    for msg, msg_type, fields in cases:
        data = bytes(serialize_message(msg))
        read = cdr_reader(input_spec(msg_type, fields))
        stamp_ns, values = read(data)
        for cut in range(len(data)):
            try:
                result = read(data[:cut])
            except CdrError:
                continue
            # only bytes the fields do not need may be missing
            assert result[0] == stamp_ns and result[1].tobytes() == values.tobytes(), cut


def test_other_encapsulations_are_left_to_the_deserialiser():
    from sensor_msgs.msg import Range
    data = bytes(serialize_message(with_header(Range(range=2.0), 'abc', 5, 6)))
    assert encapsulation_byte_order(data) == '<'
    read = cdr_reader(input_spec('sensor_msgs/msg/Range', ['range']))
    for header in (b'\x00\x07', b'\x00\x03', b'\x12\x34'):  # PLAIN_CDR2_LE, PL_CDR_LE, junk
        with pytest.raises(UnsupportedEncapsulation):
            read(header + data[2:])
    for short in (b'', b'\x00', b'\x00\x01\x00'):
        with pytest.raises(UnsupportedEncapsulation):
            read(short)


def test_specs_it_cannot_read_are_refused_up_front():
    spec = input_spec('sensor_msgs/msg/Range', ['range'])
    with pytest.raises(ValueError, match='no member'):
        cdr_reader(type(spec)(**{**spec.__dict__, 'fields': ('colour',)}))
    with pytest.raises(ValueError, match='no CDR layout'):
        cdr_reader(type(spec)(**{**spec.__dict__, 'msg_type': 'geometry_msgs/msg/Twist'}))
