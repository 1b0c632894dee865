"""rosbag2 writing, description and extraction (obstacle_classifier.bags), without a ROS graph.

Bags are written by ``write_simulated_bag`` (rclpy CDR) or crafted here with ``rosbags`` for the
cases the simulator never produces (unknown types, missing labels, chosen label times).
"""
from __future__ import annotations

import collections
import shutil
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, Writer
from rosbags.typesys import Stores, get_typestore

from obstacle_classifier.bags import (DEFAULT_SIM_START_NS, LABELS_TOPIC, BagError, bag_info,
                                      extract_bag, format_bag_info, write_simulated_bag)
from obstacle_classifier.features import FeatureConfig
from obstacle_classifier.simulation import CLASS_NAMES, simulate_dataset

#: rclpy's vendored lark imports deprecated modules when the first type support loads.
pytestmark = pytest.mark.filterwarnings(
    "ignore:module 'sre_parse' is deprecated:DeprecationWarning",
    "ignore:module 'sre_constants' is deprecated:DeprecationWarning")

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
SIM_SECONDS = 8.0
SPEED_INPUT = {
    'name': 'speed', 'topic': 'sensors/speed', 'msg_type': 'std_msgs/msg/Float64',
    'fields': ['data'], 'dim': 1, 'valid_range': [-1.0, 3.0], 'timeout_s': 0.3,
    'window_s': 0.3, 'aggregations': ['last', 'mean'], 'policy': 'skip',
    'stamp_source': 'receive'}
SPEED_CONFIG = FeatureConfig.from_dict({'rate_hz': 10, 'inputs': [SPEED_INPUT]},
                                       source='speed-only')
SECOND = 1_000_000_000


@pytest.fixture(scope='module')
def simulated_bags(tmp_path_factory) -> dict[str, Path]:
    """One short simulated bag per storage format, seed 5 (shared: writing takes a second)."""
    root = tmp_path_factory.mktemp('bags')
    return {storage: (write_simulated_bag(root / storage, SIM_SECONDS, seed=5, storage=storage),
                      root / storage)[1] for storage in ('sqlite3', 'mcap')}


def _write_bag(path: Path, messages: list[tuple[str, str, int, object]],
               storage: str = 'sqlite3', encode=None) -> Path:
    """Write (topic, msgtype, time_ns, message) tuples with rosbags' own serialiser (or with
    ``encode(message, msgtype) -> bytes``)."""
    from rosbags.rosbag2 import StoragePlugin
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    encode = encode or TYPESTORE.serialize_cdr
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections = {}
        for topic, msgtype, time_ns, msg in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=TYPESTORE)
            writer.write(connections[topic], time_ns, encode(msg, msgtype))
    return path


def _speed(value: float):
    return TYPESTORE.types['std_msgs/msg/Float64'](data=value)


def _label(text: str):
    return TYPESTORE.types['std_msgs/msg/String'](data=text)


def _speed_messages(start_ns: int, seconds: float, rate_hz: float = 50.0):
    period = int(SECOND / rate_hz)
    return [('/sensors/speed', 'std_msgs/msg/Float64', start_ns + k * period, _speed(k * 0.001))
            for k in range(int(seconds * rate_hz))]


# -- writing ----------------------------------------------------------------------------------

def test_simulated_bag_holds_rclpy_cdr_that_both_rclpy_and_rosbags_decode(simulated_bags):
    from rclpy.serialization import deserialize_message

    from obstacle_classifier.ros_io import message_class
    seen = set()
    with Reader(simulated_bags['sqlite3']) as reader:
        for connection, timestamp, raw in reader.messages():
            if connection.topic in seen:
                continue
            seen.add(connection.topic)
            by_rclpy = deserialize_message(bytes(raw), message_class(connection.msgtype))
            by_rosbags = TYPESTORE.deserialize_cdr(raw, connection.msgtype)
            if hasattr(by_rclpy, 'header'):
                assert by_rclpy.header.stamp.sec * SECOND + by_rclpy.header.stamp.nanosec \
                    == timestamp
                assert by_rosbags.header.stamp.sec == by_rclpy.header.stamp.sec
            if connection.msgtype == 'sensor_msgs/msg/LaserScan':
                np.testing.assert_array_equal(np.asarray(by_rclpy.ranges), by_rosbags.ranges)
            elif connection.msgtype == 'sensor_msgs/msg/Range':
                assert by_rclpy.range == by_rosbags.range or np.isinf(by_rosbags.range)
            elif connection.msgtype.startswith('std_msgs'):
                assert by_rclpy.data == by_rosbags.data
    assert len(seen) == 8 and '/' + LABELS_TOPIC in seen


def test_mcap_bag_is_read_by_the_independent_mcap_reader(simulated_bags):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    info = bag_info(simulated_bags['mcap'])
    counts = collections.Counter()
    labels = []
    scan_ranges = None
    with open(next(simulated_bags['mcap'].glob('*.mcap')), 'rb') as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        for _, channel, _, decoded in reader.iter_decoded_messages():
            counts[channel.topic] += 1
            if channel.topic == '/' + LABELS_TOPIC:
                labels.append(decoded.data)
            elif channel.topic == '/sensors/scan' and scan_ranges is None:
                scan_ranges = decoded.ranges
    assert len(scan_ranges) == 181
    assert dict(counts) == {topic.topic: topic.count for topic in info.topics}
    assert all(name in CLASS_NAMES for text in labels for name in text.split(',') if name)


def test_write_refuses_an_existing_directory_and_a_bad_storage(tmp_path):
    with pytest.raises(BagError, match='already exists'):
        write_simulated_bag(tmp_path, 1.0)
    with pytest.raises(BagError, match="unknown storage 'rosbag1'"):
        write_simulated_bag(tmp_path / 'new', 1.0, storage='rosbag1')


# -- info -------------------------------------------------------------------------------------

@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_bag_info_gives_topics_types_counts_duration_and_storage(simulated_bags, storage):
    info = bag_info(simulated_bags[storage])
    assert info.storage == storage
    by_topic = {topic.topic: topic for topic in info.topics}
    assert by_topic['/sensors/scan'].msg_type == 'sensor_msgs/msg/LaserScan'
    assert by_topic['/sensors/scan'].count == int(SIM_SECONDS * 10)  # the lidar runs at 10 Hz
    assert by_topic['/obstacle_labels'].count == int(SIM_SECONDS * 20)  # labels at rate_hz
    assert info.message_count == sum(topic.count for topic in info.topics)
    assert SIM_SECONDS - 0.1 < info.duration_s <= SIM_SECONDS
    assert info.start_ns >= DEFAULT_SIM_START_NS
    text = format_bag_info(info)
    assert f'storage:   {storage}' in text and '/sensors/imu' in text


def test_bag_info_of_a_compressed_bag_reads_only_its_metadata(tmp_path, monkeypatch):
    import tempfile
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin
    bag = tmp_path / 'compressed'
    writer = Writer(bag, version=9, storage_plugin=StoragePlugin.SQLITE3)
    writer.set_compression(CompressionMode.FILE, CompressionFormat.ZSTD)  # before opening
    with writer:
        speed = writer.add_connection('/sensors/speed', 'std_msgs/msg/Float64',
                                      typestore=TYPESTORE)
        for _, msgtype, time_ns, msg in _speed_messages(100 * SECOND, 2.0):
            writer.write(speed, time_ns, TYPESTORE.serialize_cdr(msg, msgtype))
    # Opening it with rosbags would decompress every file into the temporary directory.
    scratch = tmp_path / 'tmp'
    scratch.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(scratch))
    info = bag_info(bag)
    assert list(scratch.iterdir()) == []
    assert (info.storage, info.compression, info.message_count) == ('sqlite3', 'zstd (file)', 100)
    assert info.start_ns == 100 * SECOND and info.end_ns == 100 * SECOND + 99 * 20_000_000
    assert 'compress:  zstd (file)' in format_bag_info(info)
    assert extract_bag(bag, SPEED_CONFIG, require_labels=False).readings == {'speed': 100}


def test_bag_info_of_damaged_metadata_is_a_bag_error(simulated_bags, tmp_path):
    bag = shutil.copytree(simulated_bags['sqlite3'], tmp_path / 'bag')
    (bag / 'metadata.yaml').write_text('rosbag2_bagfile_information: {version: 9}\n')
    with pytest.raises(BagError, match="invalid metadata.yaml .*KeyError"):
        bag_info(bag)
    (bag / 'metadata.yaml').write_text('rosbag2_bagfile_information: [\n')
    with pytest.raises(BagError, match='cannot read metadata.yaml'):
        bag_info(bag)
    shutil.copy(simulated_bags['sqlite3'] / 'metadata.yaml', bag / 'metadata.yaml')
    (storage_file,) = bag.glob('*.db3')
    storage_file.unlink()
    with pytest.raises(BagError, match=f'storage file.s. missing: {storage_file.name}'):
        bag_info(bag)


# -- extraction -------------------------------------------------------------------------------

@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_extraction_equals_the_simulators_own_features_bitwise(simulated_bags, storage):
    """Bag -> CDR -> extract_values -> pipeline gives exactly simulate_dataset's vectors."""
    extraction = extract_bag(simulated_bags[storage])
    simulated = simulate_dataset(int(SIM_SECONDS * 20), seed=5)
    common, in_bag, in_sim = np.intersect1d(extraction.stamps_ns - DEFAULT_SIM_START_NS,
                                            simulated.stamps_ns, return_indices=True)
    assert len(common) >= len(extraction.stamps_ns) - 1 and len(common) > 100
    assert extraction.dataset.X.dtype == simulated.X.dtype == np.float64
    np.testing.assert_array_equal(extraction.dataset.X[in_bag], simulated.X[in_sim])
    np.testing.assert_array_equal(extraction.dataset.Y[in_bag], simulated.Y[in_sim])
    assert extraction.dataset.class_names == CLASS_NAMES
    assert extraction.skipped_messages == {} and extraction.missing_inputs == ()
    assert np.all(np.diff(extraction.stamps_ns) == SECOND // 20)


def test_labels_are_paired_with_the_newest_label_at_or_before_each_tick(tmp_path):
    start = 100 * SECOND
    messages = _speed_messages(start, 3.0)
    # Labels at 1.0 s and 1.55 s after the start, then nothing: later ticks are unlabelled.
    messages += [('/obstacle_labels', 'std_msgs/msg/String', start + SECOND, _label('pole')),
                 ('/obstacle_labels', 'std_msgs/msg/String', start + 1_550_000_000,
                  _label('dog, curb'))]
    messages.sort(key=lambda item: item[2])
    bag = _write_bag(tmp_path / 'bag', messages)
    extraction = extract_bag(bag, SPEED_CONFIG, label_max_age_s=0.5)
    stamps = (extraction.stamps_ns - start) // 100_000_000  # tenths of a second
    names = [tuple(name for name, hit in zip(CLASS_NAMES, row) if hit)
             for row in extraction.dataset.Y]
    assert dict(zip(stamps.tolist(), names)) == {
        10: ('pole',), 11: ('pole',), 12: ('pole',), 13: ('pole',), 14: ('pole',),
        15: ('pole',), 16: ('dog', 'curb'), 17: ('dog', 'curb'), 18: ('dog', 'curb'),
        19: ('dog', 'curb'), 20: ('dog', 'curb')}
    assert extraction.unlabelled_ticks == extraction.ticks - 11
    # Predictions ignore the labels: every tick with features stays, labelled or not.
    ignored = extract_bag(bag, SPEED_CONFIG, require_labels=False, ignore_labels=True)
    assert ignored.dataset.c == 0 and ignored.unlabelled_ticks == 0
    assert ignored.dataset.n == ignored.ticks - ignored.skipped_ticks > 11


def _speed_bag_with_an_empty_topic(path: Path, topic: str, msgtype: str) -> Path:
    """2 s of speed readings, and ``topic`` recorded without a single message."""
    from rosbags.rosbag2 import StoragePlugin
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        writer.add_connection(topic, msgtype, typestore=TYPESTORE)
        speed = writer.add_connection('/sensors/speed', 'std_msgs/msg/Float64',
                                      typestore=TYPESTORE)
        for _, speed_type, time_ns, msg in _speed_messages(100 * SECOND, 2.0):
            writer.write(speed, time_ns, TYPESTORE.serialize_cdr(msg, speed_type))
    return path


def test_a_label_topic_without_messages_counts_as_no_labels(tmp_path):
    bag = _speed_bag_with_an_empty_topic(tmp_path / 'empty_labels', '/obstacle_labels',
                                         'std_msgs/msg/String')
    extraction = extract_bag(bag, SPEED_CONFIG, require_labels=False)
    assert extraction.dataset.c == 0 and extraction.unlabelled_ticks == 0
    assert extraction.dataset.n == extraction.ticks - extraction.skipped_ticks > 0
    with pytest.raises(BagError, match='label topic /obstacle_labels has no messages'):
        extract_bag(bag, SPEED_CONFIG)


def test_features_follow_the_pipeline_for_receive_stamped_inputs(tmp_path):
    start = 100 * SECOND
    bag = _write_bag(tmp_path / 'bag', _speed_messages(start, 2.0))
    extraction = extract_bag(bag, SPEED_CONFIG, require_labels=False)
    assert extraction.dataset.c == 0 and extraction.dataset.Y.shape == (extraction.dataset.n, 0)
    first_tick = extraction.stamps_ns[0]
    assert first_tick == start + 300_000_000  # first grid point a full window after the start
    # At t the window (t - 0.3 s, t] holds readings k with start + k * 20 ms in it.
    tick_k = (first_tick - start) // 20_000_000
    window = np.arange(tick_k - 14, tick_k + 1) * 0.001
    assert extraction.dataset.X[0, 0] == window[-1]
    assert extraction.dataset.X[0, 1] == pytest.approx(window.mean(), rel=1e-12)
    assert extraction.readings == {'speed': 100}


def test_windows_truncated_by_an_input_faster_than_its_max_rate_are_counted_and_warned(
        tmp_path):
    # 50 Hz into a buffer sized for 2 Hz: the features silently came from the newest readings.
    bag = _write_bag(tmp_path / 'bag', _speed_messages(100 * SECOND, 2.0))
    slow = FeatureConfig.from_dict({'rate_hz': 10, 'inputs': [{**SPEED_INPUT, 'max_rate_hz': 2}]},
                                   source='slow')
    extraction = extract_bag(bag, slow, require_labels=False)
    assert extraction.truncated_windows == {'speed': extraction.ticks} and extraction.ticks > 0
    assert 'warning: features from truncated windows' in extraction.summary()
    assert f'speed {extraction.ticks} of {extraction.ticks} ticks' in extraction.summary()
    plain = extract_bag(bag, SPEED_CONFIG, require_labels=False)
    assert plain.truncated_windows == {'speed': 0} and plain.warnings() == []
    assert 'warning' not in plain.summary()


# -- bad input --------------------------------------------------------------------------------

def test_missing_metadata_yaml_is_named(simulated_bags, tmp_path):
    broken = shutil.copytree(simulated_bags['sqlite3'], tmp_path / 'no_metadata')
    (broken / 'metadata.yaml').unlink()
    for action in (bag_info, extract_bag):
        with pytest.raises(BagError, match='missing metadata.yaml'):
            action(broken)


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_truncated_bag_is_reported_as_corrupt(simulated_bags, tmp_path, storage):
    broken = shutil.copytree(simulated_bags[storage], tmp_path / 'truncated')
    (storage_file,) = [p for p in broken.iterdir() if p.suffix in ('.db3', '.mcap')]
    storage_file.write_bytes(storage_file.read_bytes()[:storage_file.stat().st_size // 3])
    with pytest.raises(BagError, match=r'truncated: cannot open bag|malformed|magic'):
        extract_bag(broken)


def test_damaged_sqlite_pages_are_reported_as_corrupt(simulated_bags, tmp_path):
    # A .db3 whose header is intact but some message pages are not (power lost while
    # recording): sqlite finds out only while reading them, through rosbags' apsw driver.
    broken = shutil.copytree(simulated_bags['sqlite3'], tmp_path / 'damaged')
    (storage_file,) = broken.glob('*.db3')
    data = bytearray(storage_file.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(byte ^ 0x5A for byte in data[middle:middle + 64])
    storage_file.write_bytes(bytes(data))
    with pytest.raises(BagError, match='damaged: corrupt'):
        extract_bag(broken)


def test_garbage_storage_file_is_reported_not_raised_raw(simulated_bags, tmp_path):
    broken = shutil.copytree(simulated_bags['sqlite3'], tmp_path / 'garbage')
    (storage_file,) = broken.glob('*.db3')
    storage_file.write_bytes(b'not a database at all' * 100)
    with pytest.raises(BagError, match='garbage: cannot open bag'):
        extract_bag(broken)
    assert bag_info(broken).message_count > 0  # info reads the metadata alone


def test_not_a_directory_and_no_such_bag_are_named(tmp_path):
    with pytest.raises(BagError, match='no such bag directory'):
        extract_bag(tmp_path / 'absent')
    plain = tmp_path / 'file.db3'
    plain.write_bytes(b'')
    with pytest.raises(BagError, match='not a bag directory'):
        bag_info(plain)


def test_inputs_are_read_from_their_cdr_bytes_in_either_byte_order(tmp_path):
    """Extraction reads the recorded bytes with the node's reader: big-endian CDR gives the
    same data set; bytes that end too early are refused with the topic and time."""
    messages = _speed_messages(100 * SECOND, 2.0)
    little = extract_bag(_write_bag(tmp_path / 'le', messages), SPEED_CONFIG,
                         require_labels=False)
    big = extract_bag(_write_bag(tmp_path / 'be', messages, encode=lambda msg, msgtype: (
        TYPESTORE.serialize_cdr(msg, msgtype, little_endian=False))), SPEED_CONFIG,
        require_labels=False)
    assert little.dataset.n > 0
    np.testing.assert_array_equal(big.dataset.X, little.dataset.X)
    cut = messages[30][2]
    truncated = _write_bag(tmp_path / 'cut', messages, encode=lambda msg, msgtype: (
        TYPESTORE.serialize_cdr(msg, msgtype)[:8 if msg is messages[30][3] else None]))
    with pytest.raises(BagError, match=f'/sensors/speed at {cut} ns does not decode'):
        extract_bag(truncated, SPEED_CONFIG, require_labels=False)


def test_ranges_outside_their_sensors_own_limits_are_refused_as_the_node_counts_them(
        tmp_path):
    Range = TYPESTORE.types['sensor_msgs/msg/Range']
    Header = TYPESTORE.types['std_msgs/msg/Header']
    Time = TYPESTORE.types['builtin_interfaces/msg/Time']
    config = FeatureConfig.from_dict({'rate_hz': 10, 'inputs': [{
        'name': 'front', 'topic': 'sensors/front', 'msg_type': 'sensor_msgs/msg/Range',
        'fields': ['range'], 'dim': 1, 'valid_range': [0.0, 4.0], 'timeout_s': 0.3,
        'window_s': 0.3, 'aggregations': ['last'], 'policy': 'skip'}]}, source='front')
    start, messages = 100 * SECOND, []
    for k in range(100):  # 50 Hz, every fifth beyond the 2 m its message says it can measure
        value, limits = (3.5, (0.02, 2.0)) if k % 5 == 0 else (1.0, (0.02, 2.0))
        if k % 5 == 1:
            limits = (2.0, 0.02)  # upside down
        t = start + k * 20_000_000
        header = Header(stamp=Time(sec=t // SECOND, nanosec=t % SECOND), frame_id='front')
        messages.append(('/sensors/front', 'sensor_msgs/msg/Range', t, Range(
            header=header, radiation_type=0, field_of_view=0.4, min_range=limits[0],
            max_range=limits[1], range=value, variance=0.0)))
    extraction = extract_bag(_write_bag(tmp_path / 'bag', messages), config,
                             require_labels=False)
    assert extraction.rejected == {'front': {'outside_sensor_limits': 20,
                                             'bad_sensor_limits': 20}}
    assert set(extraction.dataset.X[:, 0]) == {1.0}
    assert 'outside_sensor_limits 20' in extraction.summary()


def test_unknown_message_type_is_skipped_and_counted(tmp_path):
    start = 100 * SECOND
    path = tmp_path / 'bag'
    with Writer(path, version=9) as writer:
        speed = writer.add_connection('/sensors/speed', 'std_msgs/msg/Float64',
                                      typestore=TYPESTORE)
        custom = writer.add_connection('/gadget', 'my_robot_msgs/msg/Gadget',
                                       msgdef='float64 level', rihs01='RIHS01_' + '0' * 64)
        for _, msgtype, time_ns, msg in _speed_messages(start, 2.0):
            writer.write(speed, time_ns, TYPESTORE.serialize_cdr(msg, msgtype))
            writer.write(custom, time_ns, b'\x00\x01\x00\x00' + b'\x00' * 8)
    extraction = extract_bag(path, SPEED_CONFIG, require_labels=False)
    assert extraction.skipped_messages == {
        '/gadget (my_robot_msgs/msg/Gadget): unknown message type': 100}
    assert 'skipped 100 message(s) on /gadget' in extraction.summary()
    assert extraction.dataset.n > 0


def test_input_topic_with_another_type_is_skipped_and_counted(tmp_path):
    messages = [('/sensors/speed', 'std_msgs/msg/String', 100 * SECOND + k, _label('x'))
                for k in range(3)]
    bag = _write_bag(tmp_path / 'bag', messages)
    with pytest.raises(BagError, match='none of the configured input topics'):
        extract_bag(bag, SPEED_CONFIG, require_labels=False)


def test_bag_without_the_label_topic_is_refused_when_labels_are_required(tmp_path):
    bag = _write_bag(tmp_path / 'unlabelled', _speed_messages(100 * SECOND, 2.0))
    with pytest.raises(BagError, match=r'no label topic /obstacle_labels .* cannot be used for '
                                       r'training'):
        extract_bag(bag, SPEED_CONFIG)


def test_label_naming_an_unknown_class_is_refused(tmp_path):
    messages = _speed_messages(100 * SECOND, 1.0)
    messages.append(('/obstacle_labels', 'std_msgs/msg/String', 100 * SECOND + 1, _label('ufo')))
    messages.sort(key=lambda item: item[2])
    bag = _write_bag(tmp_path / 'bag', messages)
    with pytest.raises(BagError, match="label 'ufo' .* is not a known class"):
        extract_bag(bag, SPEED_CONFIG)


def test_multi_hot_labels_are_read_as_the_node_takes_them(tmp_path):
    # A robot whose trainer runs with train.labels_format: multi_hot records UInt8MultiArray.
    start = 100 * SECOND
    multi_hot = TYPESTORE.types['std_msgs/msg/UInt8MultiArray']
    layout = TYPESTORE.types['std_msgs/msg/MultiArrayLayout'](dim=[], data_offset=0)

    def label(*names):
        row = np.array([name in names for name in CLASS_NAMES], dtype=np.uint8)
        return ('/obstacle_labels', 'std_msgs/msg/UInt8MultiArray', start + SECOND,
                multi_hot(layout=layout, data=row))

    as_names = _speed_messages(start, 2.0) + [
        ('/obstacle_labels', 'std_msgs/msg/String', start + SECOND, _label('dog,curb'))]
    expected = extract_bag(_write_bag(tmp_path / 'names', sorted(as_names, key=lambda m: m[2])),
                           SPEED_CONFIG)
    bag = _write_bag(tmp_path / 'multi_hot', sorted(_speed_messages(start, 2.0) +
                                                    [label('dog', 'curb')], key=lambda m: m[2]))
    extracted = extract_bag(bag, SPEED_CONFIG)
    assert np.array_equal(extracted.dataset.Y, expected.dataset.Y)
    assert np.array_equal(extracted.dataset.X, expected.dataset.X)
    assert extracted.dataset.Y.sum() == 2 * extracted.dataset.n > 0
    # Predictions do not read labels: a label topic of any type is left alone.
    assert extract_bag(bag, SPEED_CONFIG, require_labels=False, ignore_labels=True).dataset.c == 0
    wide = _write_bag(tmp_path / 'wide', sorted(_speed_messages(start, 2.0) + [
        (*label()[:3], multi_hot(layout=layout, data=np.ones(3, np.uint8)))],
        key=lambda m: m[2]))
    with pytest.raises(BagError, match='multi-hot label at .* is wrong_width .*expected 8'):
        extract_bag(wide, SPEED_CONFIG)


RANGE_INPUT = {**SPEED_INPUT, 'name': 'range', 'topic': 'sensors/range/front',
               'msg_type': 'sensor_msgs/msg/Range', 'fields': ['range'],
               'valid_range': [0.0, 4.0], 'policy': 'fill', 'fill_value': 4.0}
_RANGE_HEAD = 'std_msgs/Header header\nuint8 radiation_type\n'


def _ranges_with_definition(path: Path, definition: str) -> Path:
    """Speed, and Range messages serialised with another definition of sensor_msgs/msg/Range,
    recorded in the bag with that definition and its type hash (as ros2 bag record does)."""
    from rosbags.typesys import get_types_from_msg
    store = get_typestore(Stores.EMPTY)
    store.register({name: TYPESTORE.fielddefs[name]
                    for name in ('std_msgs/msg/Header', 'builtin_interfaces/msg/Time')})
    store.register(get_types_from_msg(definition, 'sensor_msgs/msg/Range'))
    range_type = store.types['sensor_msgs/msg/Range']
    msgdef, _ = store.generate_msgdef('sensor_msgs/msg/Range', ros_version=2)
    with Writer(path, version=9) as writer:
        ranges = writer.add_connection('/sensors/range/front', 'sensor_msgs/msg/Range',
                                       msgdef=msgdef,
                                       rihs01=store.hash_rihs01('sensor_msgs/msg/Range'))
        speed = writer.add_connection('/sensors/speed', 'std_msgs/msg/Float64',
                                      typestore=TYPESTORE)
        for _, msgtype, time_ns, msg in _speed_messages(100 * SECOND, 2.0):
            writer.write(speed, time_ns, TYPESTORE.serialize_cdr(msg, msgtype))
            stamp = TYPESTORE.types['builtin_interfaces/msg/Time'](
                sec=time_ns // SECOND, nanosec=time_ns % SECOND)
            header = TYPESTORE.types['std_msgs/msg/Header'](stamp=stamp, frame_id='sonar')
            fields = {name: 0.5 if name == 'range' else 0
                      for name in range_type.__dataclass_fields__ if name != 'header'}
            writer.write(ranges, time_ns, store.serialize_cdr(
                range_type(header=header, **fields), 'sensor_msgs/msg/Range'))
    return path


def test_the_cdr_layouts_are_the_installed_definitions():
    # What the recorded definitions are compared with (and what the node's reader assumes).
    from obstacle_classifier.bags import wire_layout
    from obstacle_classifier.cdr import LAYOUTS
    for msg_type, layout in LAYOUTS.items():
        assert wire_layout(TYPESTORE, msg_type) == list(layout), msg_type


def test_an_input_recorded_with_another_definition_of_its_type_is_skipped_and_named(tmp_path):
    config = FeatureConfig.from_dict({'rate_hz': 10, 'inputs': [SPEED_INPUT, RANGE_INPUT]})
    # A vendor's float64 Range: read with the installed layout its range would be garbage.
    vendor = _ranges_with_definition(tmp_path / 'vendor', _RANGE_HEAD + ''.join(
        f'float64 {name}\n' for name in ('field_of_view', 'min_range', 'max_range', 'range')))
    extraction = extract_bag(vendor, config, require_labels=False)
    assert extraction.skipped_messages == {
        '/sensors/range/front (sensor_msgs/msg/Range): its recorded definition differs from '
        "the installed one: member 4 is ('field_of_view', 'd'), expected "
        "('field_of_view', 'f')": 100}
    assert extraction.missing_inputs == ('range',) and extraction.readings['range'] == 0
    # An older Range without the variance member: the members read are where they were.
    older = _ranges_with_definition(tmp_path / 'older', _RANGE_HEAD + ''.join(
        f'float32 {name}\n' for name in ('field_of_view', 'min_range', 'max_range', 'range')))
    extraction = extract_bag(older, config, require_labels=False)
    assert extraction.skipped_messages == {} and extraction.readings['range'] == 100
    assert set(extraction.dataset.X[:, config.feature_names.index('range.last')]) == {0.5}


def test_no_usable_ticks_names_the_inputs_the_bag_lacks(tmp_path):
    config = FeatureConfig.from_dict({'rate_hz': 10, 'inputs': [
        SPEED_INPUT, {**SPEED_INPUT, 'name': 'noise', 'topic': 'sensors/noise'}]})
    bag = _write_bag(tmp_path / 'no_noise', _speed_messages(100 * SECOND, 2.0))
    with pytest.raises(BagError, match='no usable ticks: .* inputs without messages in the '
                                       'bag: noise'):
        extract_bag(bag, config, require_labels=False)
    # A topic that is in the bag without a single message (its driver died) is named too.
    empty_noise = _speed_bag_with_an_empty_topic(tmp_path / 'empty_noise', '/sensors/noise',
                                                 'std_msgs/msg/Float64')
    with pytest.raises(BagError, match='inputs without messages in the bag: noise'):
        extract_bag(empty_noise, config, require_labels=False)


def test_bag_too_short_for_one_tick_is_refused(tmp_path):
    bag = _write_bag(tmp_path / 'short', _speed_messages(100 * SECOND, 0.1))
    with pytest.raises(BagError, match='no usable ticks'):
        extract_bag(bag, SPEED_CONFIG, require_labels=False)


def _write_split_bag(path: Path, parts: list[list[tuple[str, str, int, object]]]) -> Path:
    """One bag directory holding one sqlite3 file per part, as ``ros2 bag record`` splits
    (each file written by rosbags, then the metadata of all of them joined)."""
    import yaml
    path.mkdir()
    joined = None
    for index, part in enumerate(parts):
        single = _write_bag(path.parent / f'{path.name}_part{index}', part)
        info = yaml.safe_load((single / 'metadata.yaml').read_text())
        info = info['rosbag2_bagfile_information']
        name = f'{path.name}_{index}.db3'
        (single / info['relative_file_paths'][0]).rename(path / name)
        info['files'][0]['path'] = name
        if joined is None:
            joined = dict(info, relative_file_paths=[], files=[], message_count=0)
            counts = collections.Counter()
        joined['relative_file_paths'].append(name)
        joined['files'] += info['files']
        joined['message_count'] += info['message_count']
        counts.update({entry['topic_metadata']['name']: entry['message_count']
                       for entry in info['topics_with_message_count']})
    for entry in joined['topics_with_message_count']:
        entry['message_count'] = counts[entry['topic_metadata']['name']]
    (path / 'metadata.yaml').write_text(yaml.safe_dump({'rosbag2_bagfile_information': joined}))
    return path


def test_a_split_bag_is_read_in_time_order_across_its_files(tmp_path):
    # A recorder's cache can put a message into the next file after newer ones went into the
    # previous file (ros2/rosbag2#857): here a speed reading and a label, 30 ms each.
    start = 100 * SECOND
    messages = _speed_messages(start, 3.0)
    messages += [('/obstacle_labels', 'std_msgs/msg/String', start + k * 100_000_000,
                  _label('pole' if k == 15 else '')) for k in range(30)]
    messages.sort(key=lambda item: item[2])
    whole = _write_bag(tmp_path / 'whole', messages)
    cut = next(k for k, item in enumerate(messages) if item[2] >= start + 1_530_000_000)
    late = [k for k in range(cut - 6, cut) if messages[k][2] >= start + 1_500_000_000]
    assert {messages[k][0] for k in late} == {'/sensors/speed', '/obstacle_labels'}
    first = [item for k, item in enumerate(messages[:cut]) if k not in late]
    second = [messages[k] for k in late] + messages[cut:]
    split = _write_split_bag(tmp_path / 'split', [first, second])
    with Reader(split) as reader:
        assert len(reader.storage.storages) == 2
    expected, extracted = extract_bag(whole, SPEED_CONFIG), extract_bag(split, SPEED_CONFIG)
    assert np.array_equal(extracted.dataset.X, expected.dataset.X)
    assert np.array_equal(extracted.dataset.Y, expected.dataset.Y)
    assert np.array_equal(extracted.stamps_ns, expected.stamps_ns)
    assert expected.dataset.Y[:, CLASS_NAMES.index('pole')].sum() == 1
