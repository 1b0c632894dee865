"""rosbag2 bags: write a simulated run as a bag, describe a bag, extract a data set from one.

Bags are read and written with the ``rosbags`` library (sqlite3 ``.db3`` or MCAP storage), never
parsed by hand. Messages in a bag written here are real CDR from rclpy's ``serialize_message``,
so ``rosbags`` and rclpy both deserialise them.

Extraction runs the SAME feature pipeline as the node (:func:`cdr.cdr_reader` on the recorded
bytes, :meth:`FeaturePipeline.add`, :func:`features.replay`): readings in bag (receive) order,
stamped like the node stamps them (header stamp for ``stamp_source: header``, bag time
otherwise), ticks on the absolute ``rate_hz`` grid of bag time. Labels come from the
``obstacle_labels`` topic (std_msgs/String, comma-separated class names, as the simulator node
publishes them; or std_msgs/UInt8MultiArray, 0/1 per class, as the node's
``train.labels_format: multi_hot`` takes them): a tick takes the newest label received at or
before it, if that label is at most ``label_max_age_s`` old. An input recorded with another
definition of its message type than the installed one is skipped and counted, unless the
members the node reads are where the installed definition has them.
"""
from __future__ import annotations

import copy
import heapq
import operator
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NoReturn, Optional, Sequence, Union

import numpy as np

from obstacle_classifier.cdr import (LAYOUTS, CdrError, UnsupportedEncapsulation, cdr_reader,
                                     members_read)
from obstacle_classifier.datasets import Dataset
from obstacle_classifier.features import (FeatureConfig, FeaturePipeline, InputSpec,
                                          ReadingRefused, extract_values, load_default_config,
                                          message_stamp_ns, replay)
from obstacle_classifier.online_training import parse_multi_hot

__all__ = [
    'BAG_STORAGES', 'LABELS_TOPIC', 'BagError', 'BagExtraction', 'BagInfo', 'TopicSummary',
    'bag_info', 'extract_bag', 'format_bag_info', 'is_bag_directory', 'write_simulated_bag',
]

PathLike = Union[str, os.PathLike]

LABELS_TOPIC = 'obstacle_labels'
LABELS_MSG_TYPE = 'std_msgs/msg/String'
#: The label message types extraction reads, as the node's ``train.labels_format`` takes them:
#: comma-separated class names, or 0/1 per class in class order.
LABEL_MSG_TYPES = (LABELS_MSG_TYPE, 'std_msgs/msg/UInt8MultiArray')
#: ``--storage`` choices: rosbags' sqlite3 (``.db3``) and MCAP storage plugins.
BAG_STORAGES = ('sqlite3', 'mcap')
#: Bag time of simulated time zero in ``write_simulated_bag`` (a plausible wall-clock epoch;
#: a whole number of seconds, so the simulator's tick grid is the bag's absolute tick grid).
DEFAULT_SIM_START_NS = 1_700_000_000 * 1_000_000_000
_NS_PER_S = 1_000_000_000


class BagError(ValueError):
    """A bag that cannot be used; the message names the bag and what is wrong with it."""


# --------------------------------------------------------------------------------------------
# Opening bags
# --------------------------------------------------------------------------------------------

def is_bag_directory(path: PathLike) -> bool:
    """True when ``path`` is a directory (a rosbag2 bag is a directory with metadata.yaml)."""
    return Path(path).is_dir()


def _check_bag_directory(bag: Path) -> None:
    """BagError unless ``bag`` is a directory with a metadata.yaml."""
    if not bag.exists():
        raise BagError(f'{bag}: no such bag directory')
    if not bag.is_dir():
        raise BagError(f'{bag}: not a bag directory (a rosbag2 bag is a directory holding '
                       'metadata.yaml and its storage files)')
    if not (bag / 'metadata.yaml').is_file():
        raise BagError(f'{bag}: missing metadata.yaml: not a rosbag2 bag, or an unfinished one '
                       '(a recording that was killed before it closed)')


def _open_reader(path: PathLike):
    """An open ``rosbags.rosbag2.Reader``; BagError naming the problem otherwise."""
    from rosbags.rosbag2 import Reader, ReaderError
    bag = Path(path)
    _check_bag_directory(bag)
    reader = Reader(bag)
    try:
        reader.open()
    except ReaderError as exc:
        raise BagError(f'{bag}: cannot open bag: {exc}') from exc
    except (sqlite3.Error, OSError, ValueError, KeyError, TypeError) as exc:
        raise BagError(f'{bag}: corrupt bag ({type(exc).__name__}: {exc})') from exc
    except Exception as exc:
        if _from_storage_library(exc):
            raise BagError(f'{bag}: corrupt bag ({type(exc).__name__}: {exc})') from exc
        raise
    return reader


def _from_storage_library(exc: Exception) -> bool:
    """True for the storage libraries' own exception types (bad data in a bag file): the MCAP
    reader and its decompressors, and apsw, through which rosbags reads sqlite3 bags."""
    return type(exc).__module__.startswith(('rosbags', 'mcap', 'zstandard', 'lz4', 'apsw'))


def _iterate(bag: Path, reader, connections) -> Iterator[tuple[Any, int, bytes]]:
    """The bag's (connection, timestamp, raw) messages in timestamp order, with storage
    failures turned into BagError."""
    from rosbags.rosbag2 import ReaderError
    try:
        yield from _in_time_order(reader, connections)
    except ReaderError as exc:
        raise BagError(f'{bag}: cannot read messages: {exc}') from exc
    except (sqlite3.Error, OSError, ValueError, KeyError, EOFError, AssertionError) as exc:
        raise BagError(f'{bag}: corrupt or truncated bag ({type(exc).__name__}: {exc})') from exc
    except Exception as exc:
        if _from_storage_library(exc):
            raise BagError(f'{bag}: corrupt or truncated bag '
                           f'({type(exc).__name__}: {exc})') from exc
        raise


def _in_time_order(reader, connections) -> Iterator[tuple[Any, int, bytes]]:
    """``reader.messages(connections)``, merged by timestamp across a split bag's files.

    rosbags reads a split bag file after file, and each file is in time order; but a recorder
    writes from a cache, so the first messages of one file can be older than the last ones of
    the previous file (ros2/rosbag2#857). Read in file order, such a bag would be refused as
    out of order or pair ticks with the wrong labels, and its replay would send /clock
    backwards. Equal timestamps keep file order.
    """
    directory = reader.storage
    storages = getattr(directory, 'storages', ())
    if len(storages) < 2:
        return reader.messages(connections=connections)
    connections = connections or directory.connections  # as Reader.messages: () means all
    per_file = []
    for storage in storages:
        one_file = copy.copy(directory)  # the same reader, over one storage file
        one_file.storages = [storage]
        per_file.append(one_file.messages(connections))
    return heapq.merge(*per_file, key=operator.itemgetter(1))


def _typestore():
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_KILTED)


def _topic_key(topic: str) -> str:
    """A topic as it appears in a bag recorded in the root namespace: absolute."""
    return topic if topic.startswith('/') else '/' + topic


# --------------------------------------------------------------------------------------------
# bag info
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TopicSummary:
    """One topic of a bag: name, message type, message count, serialisation format."""

    topic: str
    msg_type: str
    count: int
    serialization_format: str


@dataclass(frozen=True)
class BagInfo:
    """What ``bag info`` shows: storage, compression, time span, message count and the topics
    (``end_ns``: the time of the last message)."""

    path: str
    storage: str
    start_ns: int
    end_ns: int
    message_count: int
    topics: tuple[TopicSummary, ...]
    compression: str = 'none'

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / _NS_PER_S if self.message_count else 0.0


def bag_info(path: PathLike) -> BagInfo:
    """Describe a bag from its metadata.yaml alone: no storage file is opened (opening a
    compressed bag would decompress all of it into a temporary directory first)."""
    import yaml
    bag = Path(path)
    _check_bag_directory(bag)
    try:
        metadata = yaml.safe_load((bag / 'metadata.yaml').read_text())
        info = metadata['rosbag2_bagfile_information']
        counts: dict[tuple[str, str], list] = {}
        for entry in info['topics_with_message_count']:
            topic = entry['topic_metadata']
            key = (topic['name'], topic['type'])
            counts.setdefault(key, [0, topic['serialization_format']])[0] += int(
                entry['message_count'])
        count = int(info['message_count'])
        start = int(info['starting_time']['nanoseconds_since_epoch']) if count else 0
        end = start + int(info['duration']['nanoseconds']) if count else 0
        mode = str(info.get('compression_mode') or 'none').lower()
        compression = 'none' if mode in ('', 'none') else (
            f'{info.get("compression_format") or "unknown"} ({mode})')
        storage = str(info['storage_identifier'])
        absent = [name for name in map(str, info['relative_file_paths'])
                  if not (bag / Path(name).name).is_file()]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BagError(f'{bag}: cannot read metadata.yaml ({exc})') from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise BagError(f'{bag}: invalid metadata.yaml ({type(exc).__name__}: {exc})') from exc
    if absent:
        raise BagError(f'{bag}: storage file(s) missing: {", ".join(absent)}')
    topics = tuple(TopicSummary(topic, msg_type, topic_count, fmt)
                   for (topic, msg_type), (topic_count, fmt) in sorted(counts.items()))
    return BagInfo(path=str(bag), storage=storage, start_ns=start, end_ns=end,
                   message_count=count, topics=topics, compression=compression)


def _format_ns(stamp_ns: int) -> str:
    """Integer nanoseconds as exact decimal seconds (a float would round them)."""
    seconds, nanoseconds = divmod(int(stamp_ns), _NS_PER_S)
    return f'{seconds}.{nanoseconds:09d}'


def format_bag_info(info: BagInfo) -> str:
    """The ``bag info`` text: a summary, then one line per topic."""
    lines = [f'bag:       {info.path}',
             f'storage:   {info.storage}',
             f'compress:  {info.compression}',
             f'duration:  {info.duration_s:.3f} s',
             f'start:     {_format_ns(info.start_ns)} s',
             f'end:       {_format_ns(info.end_ns)} s',
             f'messages:  {info.message_count}',
             f'topics:    {len(info.topics)}']
    width = max((len(t.topic) for t in info.topics), default=0)
    type_width = max((len(t.msg_type) for t in info.topics), default=0)
    for topic in info.topics:
        lines.append(f'  {topic.topic:<{width}}  {topic.msg_type:<{type_width}}  '
                     f'{topic.count:>8} msgs  {topic.serialization_format}')
    return '\n'.join(lines) + '\n'


# --------------------------------------------------------------------------------------------
# bag extract
# --------------------------------------------------------------------------------------------

@dataclass
class BagExtraction:
    """The result of :func:`extract_bag`.

    Attributes:
        dataset: X float64 (n, d) at the labelled, non-skipped ticks; Y uint8 (n, c) (c = 0 and
            an empty Y when the bag has no labels and they were not required).
        stamps_ns: int64 (n,) tick times (bag time).
        ticks: ticks computed; skipped_ticks: of those, skipped as stale ('skip' inputs);
            unlabelled_ticks: of those, dropped for want of a recent label.
        readings: messages fed to the pipeline, by input name; rejected: refusals by input and
            reason (the pipeline's reasons, the readers' ``READING_REFUSALS``, plus 'no_stamp'
            and 'malformed', as the node counts them).
        skipped_messages: messages not used, by 'topic (type)' with the reason: an unknown
            message type, or a type other than the config's for an input topic.
        missing_inputs: configured inputs whose topic is not in the bag or has no messages
            (a driver that died before the recording).
        truncated_windows: by input name, ticks whose window had lost readings to a full
            buffer: the input came faster than the config's ``max_rate_hz``, and its features
            at those ticks were computed from the newest readings only.
    """

    dataset: Dataset
    stamps_ns: np.ndarray
    ticks: int = 0
    skipped_ticks: int = 0
    unlabelled_ticks: int = 0
    readings: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped_messages: dict[str, int] = field(default_factory=dict)
    missing_inputs: tuple[str, ...] = ()
    truncated_windows: dict[str, int] = field(default_factory=dict)

    def warnings(self) -> list[str]:
        """What makes these features differ from what the node computes on a well-configured
        robot (empty if nothing does)."""
        truncated = {name: count for name, count in self.truncated_windows.items() if count}
        if not truncated:
            return []
        return ['features from truncated windows (the input came faster than its max_rate_hz '
                'in the feature config; only its newest readings were used) at: ' + ', '.join(
                    f'{name} {count} of {self.ticks} ticks' for name, count in truncated.items())]

    def summary(self) -> str:
        """A few lines for the command line."""
        data = self.dataset
        lines = [f'{data.n} ticks x {data.d} features, {data.c} classes from {self.ticks} ticks '
                 f'({self.skipped_ticks} skipped as stale, {self.unlabelled_ticks} without a '
                 f'recent label)']
        lines.append('readings: ' + ', '.join(f'{name} {count}'
                                              for name, count in self.readings.items()))
        refused = {name: reasons for name, reasons in self.rejected.items() if reasons}
        if refused:
            lines.append('rejected: ' + '; '.join(
                f'{name}: ' + ', '.join(f'{reason} {count}' for reason, count in reasons.items())
                for name, reasons in refused.items()))
        for what, count in self.skipped_messages.items():
            lines.append(f'skipped {count} message(s) on {what}')
        if self.missing_inputs:
            lines.append(f'inputs without messages in the bag: {", ".join(self.missing_inputs)}')
        lines += [f'warning: {warning}' for warning in self.warnings()]
        return '\n'.join(lines)


def extract_bag(path: PathLike, config: Optional[FeatureConfig] = None, *,
                class_names: Optional[Sequence[str]] = None, require_labels: bool = True,
                ignore_labels: bool = False, labels_topic: str = LABELS_TOPIC,
                label_max_age_s: float = 0.5,
                first_tick_ns: Optional[int] = None) -> BagExtraction:
    """Compute the node's feature vectors from a bag, with labels from the label topic.

    Args:
        path: the bag directory.
        config: feature config (default: the installed one).
        class_names: the classes, in label-column order (default: the simulator's classes).
        require_labels: raise BagError when the bag has no labels (for train / evaluate).
        ignore_labels: do not read the label topic: every tick with features is kept, c = 0
            (for predict); otherwise a label topic with messages drops the ticks it leaves
            unlabelled, and one without any counts as no labels.
        labels_topic: the ground-truth topic.
        label_max_age_s: a tick whose newest label is older than this is dropped.
        first_tick_ns: first tick (default: the first point of the absolute ``rate_hz`` grid at
            least the longest window after the first input message).

    Raises:
        BagError: unreadable or corrupt bag, no input topic in it, no label topic when required,
            a label naming an unknown class, an input topic with a type the config cannot read.
    """
    from obstacle_classifier.simulation import CLASS_NAMES
    if ignore_labels and require_labels:
        raise ValueError('extract_bag: ignore_labels needs require_labels=False')
    config = config if config is not None else load_default_config()
    class_names = tuple(class_names) if class_names is not None else CLASS_NAMES
    class_index = {name: index for index, name in enumerate(class_names)}
    bag = Path(path)
    typestore = _typestore()
    reader = _open_reader(bag)
    try:
        specs_by_topic = {_topic_key(spec.topic): spec for spec in config.inputs}
        label_key = _topic_key(labels_topic)
        selection = _select_connections(bag, reader.connections, specs_by_topic,
                                        None if ignore_labels else label_key, typestore)
        label_connections = selection.labels
        if ignore_labels or not sum(c.msgcount for c in label_connections):
            label_connections = []  # not read (or a topic without a single message)
        wanted = selection.inputs + label_connections
        skipped_messages, present_inputs = selection.skipped_messages, selection.present_inputs
        all_topics = ', '.join(sorted({c.topic for c in reader.connections})) or 'none'
        if not present_inputs:
            raise BagError(f'{bag}: none of the configured input topics has messages in the bag '
                           f'(expected {", ".join(sorted(specs_by_topic))}; the bag has '
                           f'{all_topics})')
        if require_labels and not label_connections:
            what = (f'label topic {label_key} has no messages' if selection.labels else
                    f'no label topic {label_key} ({LABELS_MSG_TYPE}: comma-separated class '
                    f'names, or {LABEL_MSG_TYPES[1]}: 0/1 in class order) in the bag')
            raise BagError(f'{bag}: {what}: it cannot be used for training or evaluation '
                           f'(topics: {all_topics})')
        missing = tuple(spec.name for spec in config.inputs if spec.name not in present_inputs)

        pipeline = FeaturePipeline(config)
        readings_count = {spec.name: 0 for spec in config.inputs}
        extra_rejections = {spec.name: {} for spec in config.inputs}
        label_times: list[int] = []
        label_rows: list[np.ndarray] = []
        last_receive_stamp = {spec.name: -1 for spec in config.inputs}

        def refuse(name: str, reason: str) -> None:
            extra_rejections[name][reason] = extra_rejections[name].get(reason, 0) + 1

        def decode(raw: bytes, connection: Any, timestamp: int) -> Any:
            try:
                return typestore.deserialize_cdr(raw, connection.msgtype)
            except Exception as exc:  # any decoding failure is bad data
                raise BagError(f'{bag}: message on {connection.topic} at {timestamp} ns '
                               f'does not decode as {connection.msgtype} '
                               f'({type(exc).__name__}: {exc})') from exc

        def read_input(raw: bytes, connection: Any, timestamp: int,
                       spec: InputSpec) -> tuple[Optional[int], np.ndarray]:
            # The node's own reader of serialized messages; rosbags for other encodings.
            try:
                return readers[spec.name](raw)
            except UnsupportedEncapsulation:
                msg = decode(raw, connection, timestamp)
                return message_stamp_ns(msg), extract_values(msg, spec)
            except CdrError as exc:
                decode(raw, connection, timestamp)  # raises BagError with rosbags' reason
                raise BagError(f'{bag}: message on {connection.topic} at {timestamp} ns '
                               f'does not decode as {connection.msgtype} ({exc})') from exc

        readers = {spec.name: cdr_reader(spec) for spec in config.inputs}

        def readings() -> Iterator[tuple[int, str, int, Any]]:
            for connection, timestamp, raw in _iterate(bag, reader, wanted):
                if connection.topic == label_key:
                    msg = decode(raw, connection, timestamp)
                    label_times.append(timestamp)
                    label_rows.append(_label_row(bag, msg.data, class_index, timestamp,
                                                 connection.msgtype))
                    continue
                spec = specs_by_topic[connection.topic]
                readings_count[spec.name] += 1
                try:
                    header_stamp_ns, values = read_input(raw, connection, timestamp, spec)
                except BagError:
                    raise
                except ReadingRefused as refused:  # as the node counts it
                    refuse(spec.name, refused.reason)
                    continue
                except (ValueError, TypeError, AttributeError):
                    refuse(spec.name, 'malformed')  # e.g. a message without the input's fields
                    continue
                if spec.stamp_source == 'header':
                    stamp_ns = header_stamp_ns
                    if stamp_ns is None:
                        refuse(spec.name, 'no_stamp')
                        continue
                else:  # like the node: arrival time, kept strictly increasing
                    stamp_ns = max(timestamp, last_receive_stamp[spec.name] + 1)
                    last_receive_stamp[spec.name] = stamp_ns
                yield timestamp, spec.name, stamp_ns, values

        results: list[tuple[int, Optional[np.ndarray]]] = []
        stream = readings()
        period = config.tick_period_ns
        longest_window = max(spec.window_ns for spec in config.inputs)
        # The first tick depends on the first input message: peek at it.
        first = next(stream, None)
        if first is not None:
            if first_tick_ns is None:
                earliest = first[0] + longest_window
                first_tick_ns = -(-earliest // period) * period

            def chained() -> Iterator[tuple[int, str, int, Any]]:
                yield first
                yield from stream

            results = [(r.stamp_ns, r.features) for r in replay(
                pipeline, chained(), first_tick_ns=first_tick_ns)]
    finally:
        reader.close()

    label_stamps = np.asarray(label_times, dtype=np.int64)
    max_age = int(round(label_max_age_s * _NS_PER_S))
    rows_x, rows_y, stamps = [], [], []
    skipped = unlabelled = 0
    for stamp, features in results:
        if features is None:
            skipped += 1
            continue
        if label_connections:
            position = int(np.searchsorted(label_stamps, stamp, 'right')) - 1
            if position < 0 or stamp - label_stamps[position] > max_age:
                unlabelled += 1
                continue
            rows_y.append(label_rows[position])
        rows_x.append(features)
        stamps.append(stamp)
    d, c = len(config.feature_names), len(class_names) if label_connections else 0
    X = np.asarray(rows_x, dtype=np.float64).reshape(len(rows_x), d)
    Y = np.asarray(rows_y, dtype=np.uint8).reshape(len(rows_x), c)
    if not len(X):
        absent = f'; inputs without messages in the bag: {", ".join(missing)}' if missing else ''
        raise BagError(f'{bag}: no usable ticks: {len(results)} ticks, {skipped} skipped as '
                       f'stale, {unlabelled} without a label at most {label_max_age_s:g} s old'
                       f'{absent}')
    dataset = Dataset(X, Y, config.feature_names,
                      class_names if label_connections else (), source=str(bag))
    stats = pipeline.stats()
    rejected = {name: {**{reason: count for reason, count in stats[name].rejected.items()
                          if count}, **extra_rejections[name]} for name in readings_count}
    return BagExtraction(dataset=dataset, stamps_ns=np.asarray(stamps, dtype=np.int64),
                         ticks=len(results), skipped_ticks=skipped, unlabelled_ticks=unlabelled,
                         readings=readings_count, rejected=rejected,
                         skipped_messages=skipped_messages, missing_inputs=missing,
                         truncated_windows={name: stats[name].truncated_windows
                                            for name in readings_count})


@dataclass
class _ConnectionSelection:
    """Which bag connections an extraction reads, and what it leaves out and why."""

    inputs: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    present_inputs: set = field(default_factory=set)
    skipped_messages: dict[str, int] = field(default_factory=dict)

    def skip(self, connection, reason: str) -> None:
        key = f'{connection.topic} ({connection.msgtype}): {reason}'
        self.skipped_messages[key] = self.skipped_messages.get(key, 0) + connection.msgcount


def _select_connections(bag: Path, connections, specs_by_topic: dict, label_key: Optional[str],
                        typestore) -> _ConnectionSelection:
    """Sort a bag's connections into input, label (none when ``label_key`` is None),
    skipped (counted) and unrelated ones."""
    selection = _ConnectionSelection()
    for connection in connections:
        spec = specs_by_topic.get(connection.topic)
        if connection.msgtype not in typestore.fielddefs:
            selection.skip(connection, 'unknown message type')  # on any topic: worth a note
        elif connection.topic != label_key and spec is None:
            continue  # a topic this extraction does not read
        elif connection.topic == label_key:
            if connection.msgtype not in LABEL_MSG_TYPES:
                raise BagError(f'{bag}: label topic {connection.topic} has type '
                               f'{connection.msgtype}, expected one of '
                               f'{", ".join(LABEL_MSG_TYPES)}')
            selection.labels.append(connection)
        elif connection.msgtype != spec.msg_type:
            selection.skip(connection, f'input {spec.name!r} expects {spec.msg_type}')
        elif (problem := _definition_problem(connection, spec, typestore)) is not None:
            selection.skip(connection, problem)  # read as the installed type: garbage
        else:
            selection.inputs.append(connection)
            if connection.msgcount:  # a topic without messages is as good as absent
                selection.present_inputs.add(spec.name)
    return selection


#: rosbags base type -> the member kind of cdr.LAYOUTS (struct format character or 'string')
_BASE_KINDS = {'bool': '?', 'byte': 'B', 'char': 'B', 'int8': 'b', 'uint8': 'B', 'int16': 'h',
               'uint16': 'H', 'int32': 'i', 'uint32': 'I', 'int64': 'q', 'uint64': 'Q',
               'float32': 'f', 'float64': 'd', 'string': 'string', 'wstring': 'wstring'}


def wire_layout(typestore: Any, msg_type: str, prefix: str = '') -> list[tuple[str, str]]:
    """A message type's members in wire order as :data:`cdr.LAYOUTS` spells them, from a
    rosbags typestore: (path, kind), nested messages flattened, fixed arrays one member per
    element; a sequence is one member ('float32[]', 'dimensions' or '<element>[]')."""
    from rosbags.typesys.base import Nodetype
    members: list[tuple[str, str]] = []
    for name, (node_type, detail) in typestore.fielddefs[msg_type][1]:
        path = f'{prefix}{name}'
        if node_type == Nodetype.BASE:
            members.append((path, _BASE_KINDS.get(detail[0], detail[0])))
        elif node_type == Nodetype.NAME:
            members.extend(wire_layout(typestore, detail, f'{path}.'))
        elif node_type == Nodetype.ARRAY:
            (element_type, element), length = detail
            kind = (_BASE_KINDS.get(element[0], element[0]) if element_type == Nodetype.BASE
                    else str(element))
            members.extend((f'{path}[{index}]', kind) for index in range(length))
        else:  # a sequence
            (element_type, element), _ = detail
            kind = f'{element[0] if element_type == Nodetype.BASE else element}[]'
            members.append((path, {'float32[]': 'float32[]',
                                   'std_msgs/msg/MultiArrayDimension[]': 'dimensions'}.get(
                                       kind, kind)))
    return members


def _recorded_types(connection: Any) -> Any:
    """A typestore of the definitions the bag recorded for ``connection`` (None if none)."""
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.typesys import Stores, get_typestore, get_types_from_idl, get_types_from_msg
    definition = connection.msgdef
    if definition.format == MessageDefinitionFormat.MSG:
        types = get_types_from_msg(definition.data, connection.msgtype)
    elif definition.format == MessageDefinitionFormat.IDL:
        separator = '=' * 80 + '\n'
        types = {}
        for idl in definition.data.split(separator):  # one section per type, 'IDL: ' headed
            if idl.startswith('IDL: '):
                idl = idl.split('\n', 1)[1]
            if idl.strip():
                types.update(get_types_from_idl(idl))
    else:
        return None
    typestore = get_typestore(Stores.EMPTY)
    typestore.register(types)
    return typestore


def _definition_problem(connection: Any, spec: InputSpec, typestore: Any) -> Optional[str]:
    """Why the node's reader cannot read ``connection``'s messages as ``spec.msg_type``, or
    None: the bag's type hash is the installed one, or its recorded definition agrees with
    :data:`cdr.LAYOUTS` up to the last member read (an older Range without ``variance`` is
    read correctly when only ``range`` is)."""
    if not connection.digest or connection.digest == typestore.hash_rihs01(spec.msg_type):
        return None  # the installed definition, or a bag that records no hash (Humble)
    try:
        recorded = _recorded_types(connection)
        layout = wire_layout(recorded, spec.msg_type) if recorded is not None else None
    except Exception as exc:  # rosbags' parsers raise their own errors for bad text
        return f'its recorded definition cannot be parsed ({type(exc).__name__}: {exc})'
    if layout is None:
        return 'its type hash differs from the installed definition and it records no other'
    expected = LAYOUTS[spec.msg_type]
    read = set(members_read(spec))
    last = max(k for k, (path, _) in enumerate(expected) if path in read)
    if layout[:last + 1] != list(expected[:last + 1]):
        differing = next(k for k, member in enumerate(expected[:last + 1])
                         if k >= len(layout) or layout[k] != member)
        found = layout[differing] if differing < len(layout) else 'nothing'
        return (f'its recorded definition differs from the installed one: member '
                f'{differing} is {found}, expected {expected[differing]}')
    return None


def _label_row(bag: Path, data: Any, class_index: dict[str, int], timestamp: int,
               msg_type: str) -> np.ndarray:
    """One label message's ``data`` (names text, or 0/1 per class) -> uint8 (c,)."""
    from obstacle_classifier.ros_io import decode_labels
    if msg_type != LABELS_MSG_TYPE:
        row, problem = parse_multi_hot(data, len(class_index))
        if problem:
            raise BagError(f'{bag}: multi-hot label at {timestamp} ns is {problem} (expected '
                           f'{len(class_index)} values of 0 or 1, in the order '
                           f'{", ".join(class_index)})')
        return row
    row = np.zeros(len(class_index), dtype=np.uint8)
    for name in decode_labels(data):
        index = class_index.get(name)
        if index is None:
            raise BagError(f'{bag}: label {name!r} at {timestamp} ns is not a known class '
                           f'(classes: {", ".join(class_index)})')
        row[index] = 1
    return row


# --------------------------------------------------------------------------------------------
# simulate --bag
# --------------------------------------------------------------------------------------------

def _qos_profile(reliable: bool, depth: int):
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)
    zero = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=depth,
               reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               durability=QosDurability.VOLATILE, deadline=zero, lifespan=zero,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=zero,
               avoid_ros_namespace_conventions=False)


def new_bag_directory(path: str | Path, storage: str) -> Path:
    """Check that a bag can be written to ``path`` with ``storage``; return it as a Path.

    rosbag2 writes a bag into a directory of its own: it must not exist yet, its parent must.
    """
    if storage not in BAG_STORAGES:
        raise BagError(f'unknown storage {storage!r} (known: {", ".join(BAG_STORAGES)})')
    bag = Path(path)
    if bag.exists():
        raise BagError(f'{bag}: already exists (a bag is written into a new directory)')
    if not bag.parent.is_dir():
        raise BagError(f'{bag}: directory {bag.parent} does not exist')
    return bag


def write_simulated_bag(path: PathLike, duration_s: float, *, seed: int = 0,
                        scenario: str = 'default', config: Optional[FeatureConfig] = None,
                        storage: str = 'sqlite3', start_ns: int = DEFAULT_SIM_START_NS,
                        label_rate_hz: Optional[float] = None) -> BagInfo:
    """Run the simulator and write its raw sensor messages and ground truth as a rosbag2.

    Each reading becomes the message a driver would publish (``ros_io.SensorMessageBuilder``,
    as the simulator node builds them), serialised by rclpy, on the config's topic (absolute),
    logged at its stamp; header types carry the stamp. Ground truth goes to ``/obstacle_labels``
    (std_msgs/String) at ``label_rate_hz`` (default: the config's ``rate_hz``) on the absolute
    grid, so each tick of an extraction finds the truth of its own time.

    Args:
        path: the bag directory to create (must not exist).
        duration_s: simulated seconds.
        seed, scenario: for :class:`simulation.SidewalkSimulator`.
        config: feature config (default: the installed one): which sensors and topics.
        storage: 'sqlite3' or 'mcap'.
        start_ns: bag time of simulated time 0 (a multiple of the tick period keeps grids equal).

    Returns:
        The :class:`BagInfo` of the written bag.
    """
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
    from std_msgs.msg import String

    from obstacle_classifier.ros_io import (RangeInfo, ScanGeometry, SensorMessageBuilder,
                                            encode_labels)
    from obstacle_classifier.simulation import (LIDAR_ANGLE_INCREMENT, LIDAR_ANGLE_MAX,
                                                LIDAR_ANGLE_MIN, LIDAR_RANGE_MAX,
                                                LIDAR_RANGE_MIN, RANGE_FIELD_OF_VIEW, RANGE_MAX,
                                                RANGE_MIN, SENSOR_RATES_HZ, SidewalkSimulator)
    if not duration_s > 0:
        raise BagError(f'duration must be positive, got {duration_s}')
    bag = new_bag_directory(path, storage)
    config = config if config is not None else load_default_config()
    simulator = SidewalkSimulator(seed=seed, scenario=scenario, config=config)
    geometry = ScanGeometry(angle_min=LIDAR_ANGLE_MIN, angle_max=LIDAR_ANGLE_MAX,
                            angle_increment=LIDAR_ANGLE_INCREMENT, range_min=LIDAR_RANGE_MIN,
                            range_max=LIDAR_RANGE_MAX,
                            scan_time=1.0 / SENSOR_RATES_HZ.get('lidar', 10.0))
    range_info = RangeInfo(min_range=RANGE_MIN, max_range=RANGE_MAX,
                           field_of_view=RANGE_FIELD_OF_VIEW)
    builders = {spec.name: SensorMessageBuilder(spec, frame_id=f'{spec.name}_link',
                                                range_info=range_info, scan_geometry=geometry)
                for spec in config.inputs}
    typestore = _typestore()
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    label_period = int(round(_NS_PER_S / (label_rate_hz or config.rate_hz)))
    end_sim_ns = int(round(duration_s * _NS_PER_S))
    chunk_ns = _NS_PER_S
    writer = None
    try:
        writer = Writer(bag, version=9, storage_plugin=plugin)
        writer.open()  # makes the directory: from here on it is this run's
    except WriterError as exc:  # it exists: another run's (made since the check), not ours
        raise BagError(f'{bag}: cannot write bag: {exc}') from exc
    except BaseException as exc:
        if writer is None:
            raise
        _discard(bag, writer, exc)  # made, then its storage failed
    try:
        connections = {
            spec.name: writer.add_connection(
                _topic_key(spec.topic), spec.msg_type, typestore=typestore,
                offered_qos_profiles=[_qos_profile(spec.qos == 'reliable', 5)])
            for spec in config.inputs}
        labels_connection = writer.add_connection(
            _topic_key(LABELS_TOPIC), LABELS_MSG_TYPE, typestore=typestore,
            offered_qos_profiles=[_qos_profile(True, 10)])
        next_label = label_period
        while simulator.now_ns < end_sim_ns:
            until = min(simulator.now_ns + chunk_ns, end_sim_ns)
            for reading in simulator.advance(until):
                while next_label <= reading.stamp_ns:
                    _write_label(writer, labels_connection, simulator, next_label, start_ns,
                                 serialize_message, String, encode_labels)
                    next_label += label_period
                bag_ns = start_ns + reading.stamp_ns
                msg = builders[reading.input_name].build(reading.values, bag_ns)
                writer.write(connections[reading.input_name], bag_ns,
                             serialize_message(msg))
            while next_label <= simulator.now_ns:
                _write_label(writer, labels_connection, simulator, next_label, start_ns,
                             serialize_message, String, encode_labels)
                next_label += label_period
        writer.close()
    except BaseException as exc:
        _discard(bag, writer, exc)
    return bag_info(bag)


def _discard(bag: Path, writer: Any, exc: BaseException) -> NoReturn:
    """Remove the simulated bag ``writer`` was writing when ``exc`` stopped it, and raise: a
    BagError for a write that failed, else ``exc`` itself (Ctrl-C). A bag cut short is of no
    use, and its directory would block the same command run again (the seed writes it
    again). Call it from the ``except`` block that caught ``exc``."""
    from rosbags.rosbag2 import WriterError
    try:
        writer.close()  # its files, before they go (what close writes may fail as well)
    except Exception:  # noqa: BLE001 - the first failure is the one to report
        pass
    shutil.rmtree(bag, ignore_errors=True)
    if isinstance(exc, (WriterError, sqlite3.Error, OSError)):
        raise BagError(f'{bag}: cannot write bag ({type(exc).__name__}: {exc}); nothing was '
                       'kept') from exc
    raise exc


def _write_label(writer, connection, simulator, sim_ns: int, start_ns: int, serialize_message,
                 string_type, encode_labels) -> None:
    hits = simulator.labels_at(sim_ns)
    names = [name for name, hit in zip(simulator.class_names, hits) if hit]
    writer.write(connection, start_ns + sim_ns,
                 serialize_message(string_type(data=encode_labels(names))))
