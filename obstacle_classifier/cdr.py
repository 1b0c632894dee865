"""Read a feature input's stamp and values straight from a serialized (CDR) ROS 2 message.

The live node takes its inputs as serialized bytes (``raw=True`` subscriptions) and reads only the
fields its feature config names. At the default config's rates (seven inputs, 1,400 messages/s
and more) building an rclpy message object per message (three Python objects for a Range, NumPy
arrays for every IMU covariance) costs more CPU than the feature pipeline itself. It imports no
ROS; the node falls back to rclpy's deserialisation for any encoding this does not read.

What is read: the plain (XCDR1) CDR encapsulations ``CDR_BE`` and ``CDR_LE``, the ones ROS 2
publishes, of the message types in :data:`features.MSG_TYPES`. Members are aligned to their size
(1, 4 or 8 bytes) counted from the end of the 4-byte encapsulation header; a string is a uint32
length (with the NUL) and its bytes; a sequence a uint32 count and its elements. A message is read
only as far as the last member needed.

The result is exactly :func:`features.extract_values` of the deserialised message (and
:func:`features.message_stamp_ns` of its header): float32 members widen to the same float64, the
same infinity mappings and scan sectors apply (tests compare the two on rclpy-serialised messages).
"""
from __future__ import annotations

import functools
import math
import struct
from typing import Callable, Optional, Sequence, Union

import numpy as np

from obstacle_classifier.features import InputSpec, check_limits, prepare_values

__all__ = ['LAYOUTS', 'CdrError', 'UnsupportedEncapsulation', 'cdr_reader',
           'encapsulation_byte_order', 'members_read']

Buffer = Union[bytes, bytearray, memoryview]
#: (header stamp in ns, or None without a header or for a zero stamp; values float64 (k,))
Reading = tuple[Optional[int], np.ndarray]

_NS_PER_S = 1_000_000_000
_ENCAPSULATION_HEADER = 4
#: representation identifier (first two bytes) -> struct byte order
_CDR_BE, _CDR_LE = b'\x00\x00', b'\x00\x01'
_BYTE_ORDERS = {_CDR_BE: '>', _CDR_LE: '<'}
_UINT32 = {order: struct.Struct(order + 'I') for order in _BYTE_ORDERS.values()}

# Member kinds: a struct format character of a fixed-size primitive, or one of these.
_STRING = 'string'
_FLOAT32_SEQUENCE = 'float32[]'
_DIMENSIONS = 'dimensions'  # std_msgs/MultiArrayDimension[]: (string label, uint32, uint32)
_VARIABLE = frozenset({_STRING, _FLOAT32_SEQUENCE, _DIMENSIONS})

_HEADER = (('header.stamp.sec', 'i'), ('header.stamp.nanosec', 'I'), ('header.frame_id', _STRING))


def _vector(prefix: str, axes: Sequence[str] = ('x', 'y', 'z')) -> tuple[tuple[str, str], ...]:
    return tuple((f'{prefix}.{axis}', 'd') for axis in axes)


def _covariance(name: str) -> tuple[tuple[str, str], ...]:
    return tuple((f'{name}[{i}]', 'd') for i in range(9))


#: Members of each supported type in wire order: (path as in a feature config, kind).
LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    'sensor_msgs/msg/Range': _HEADER + (
        ('radiation_type', 'B'), ('field_of_view', 'f'), ('min_range', 'f'),
        ('max_range', 'f'), ('range', 'f'), ('variance', 'f')),
    'sensor_msgs/msg/Imu': _HEADER + (
        _vector('orientation', ('x', 'y', 'z', 'w')) + _covariance('orientation_covariance')
        + _vector('angular_velocity') + _covariance('angular_velocity_covariance')
        + _vector('linear_acceleration') + _covariance('linear_acceleration_covariance')),
    'sensor_msgs/msg/LaserScan': _HEADER + (
        ('angle_min', 'f'), ('angle_max', 'f'), ('angle_increment', 'f'),
        ('time_increment', 'f'), ('scan_time', 'f'), ('range_min', 'f'), ('range_max', 'f'),
        ('ranges', _FLOAT32_SEQUENCE), ('intensities', _FLOAT32_SEQUENCE)),
    'std_msgs/msg/Float32': (('data', 'f'),),
    'std_msgs/msg/Float64': (('data', 'd'),),
    'std_msgs/msg/Float32MultiArray': (
        ('layout.dim', _DIMENSIONS), ('layout.data_offset', 'I'), ('data', _FLOAT32_SEQUENCE)),
}


class CdrError(ValueError):
    """The bytes are not a well-formed message of the expected type (e.g. truncated)."""


class UnsupportedEncapsulation(CdrError):
    """An encapsulation other than plain CDR (e.g. XCDR2): deserialise the message instead."""


def encapsulation_byte_order(data: Buffer) -> str:
    """'<' or '>' for a plain little- or big-endian CDR message; UnsupportedEncapsulation else."""
    order = _BYTE_ORDERS.get(bytes(data[:2]))
    if order is None or len(data) < _ENCAPSULATION_HEADER:
        raise UnsupportedEncapsulation(
            f'encapsulation {bytes(data[:_ENCAPSULATION_HEADER]).hex()} is not plain CDR')
    return order


class _FixedRun:
    """Consecutive fixed-size members: one ``struct.Struct`` per byte order and start alignment.

    The padding in front of each member depends on where the run starts modulo 8 (the largest
    alignment), which a string or sequence before it makes a runtime value.
    """

    def __init__(self, kinds: Sequence[str], wanted: Sequence[int]):
        self.kinds = tuple(kinds)
        self.wanted = tuple(wanted)  # positions in the run of the members to return
        self._structs: dict[tuple[str, int], struct.Struct] = {}

    def unpack(self, order: str, data: Buffer, offset: int) -> tuple[tuple, int]:
        """The wanted members' values and the offset after the run (offsets count from the
        start of ``data``, which includes the encapsulation header)."""
        layout = self.compile(order, (offset - _ENCAPSULATION_HEADER) % 8)
        values = layout.unpack_from(data, offset)
        return values, offset + layout.size

    def compile(self, order: str, start: int) -> struct.Struct:
        """The run's struct for byte order ``order`` starting at ``start`` modulo 8 into the
        payload (built once per pair)."""
        layout = self._structs.get((order, start))
        if layout is None:
            layout = self._structs[order, start] = self._build(order, start)
        return layout

    def _build(self, order: str, start: int) -> struct.Struct:
        position = start
        fmt = [order]
        for index, kind in enumerate(self.kinds):
            size = struct.calcsize(order + kind)
            padding = -position % size
            position += padding + size
            fmt.append('x' * padding + (kind if index in self.wanted else f'{size}x'))
        return struct.Struct(''.join(fmt))


@functools.lru_cache(maxsize=None)
def _program(msg_type: str, wanted: tuple[str, ...]) -> tuple[tuple[str, object], ...]:
    """The steps that read ``wanted`` members of ``msg_type``: ('fixed', _FixedRun) or a
    variable kind with whether it is wanted; the wanted values come out in wire order."""
    layout = LAYOUTS[msg_type]
    last = max(index for index, (path, _) in enumerate(layout) if path in wanted)
    steps: list[tuple[str, object]] = []
    kinds: list[str] = []
    positions: list[int] = []
    for path, kind in layout[:last + 1]:
        if kind in _VARIABLE:
            if kinds:
                steps.append(('fixed', _FixedRun(kinds, positions)))
                kinds, positions = [], []
            steps.append((kind, path in wanted))
        else:
            if path in wanted:
                positions.append(len(kinds))
            kinds.append(kind)
    if kinds:
        steps.append(('fixed', _FixedRun(kinds, positions)))
    return tuple(steps)


def _read_members(steps: tuple[tuple[str, object], ...], data: Buffer) -> list:
    """Run a program on one message: the wanted members' values in wire order (a sequence as a
    float64 array)."""
    order = encapsulation_byte_order(data)
    offset = _ENCAPSULATION_HEADER
    values: list = []
    uint32 = _UINT32[order]
    try:
        for kind, detail in steps:
            if kind == 'fixed':
                run_values, offset = detail.unpack(order, data, offset)
                values.extend(run_values)
                continue
            offset += -(offset - _ENCAPSULATION_HEADER) % 4
            (count,), offset = uint32.unpack_from(data, offset), offset + 4
            if kind == _STRING:
                offset += count
            elif kind == _FLOAT32_SEQUENCE:
                if detail:
                    values.append(np.frombuffer(data, np.dtype(order + 'f4'), count, offset)
                                  .astype(np.float64))
                offset += 4 * count
            else:  # dimensions: label string, size, stride per element
                for _ in range(count):
                    offset += -(offset - _ENCAPSULATION_HEADER) % 4
                    (length,) = uint32.unpack_from(data, offset)
                    offset += 4 + length
                    offset += -(offset - _ENCAPSULATION_HEADER) % 4 + 8
        if offset > len(data):
            raise CdrError(f'message of {len(data)} bytes ends before its members '
                           f'({offset} bytes)')
    except (struct.error, ValueError) as exc:
        if isinstance(exc, CdrError):
            raise
        raise CdrError(f'message of {len(data)} bytes is truncated: {exc}') from exc
    return values


def _little_endian_reader(steps: tuple[tuple[str, object], ...]
                          ) -> Optional[Callable[[Buffer], Sequence]]:
    """A shortcut of :func:`_read_members` for little-endian messages of the common shapes:
    fixed members only (std_msgs scalars), or fixed members, one string and fixed members (a
    header, then scalars: Range, Imu). None for other programs. Raises struct.error for bytes
    that end too early."""
    shape = [kind for kind, _ in steps]
    if shape == ['fixed']:
        layout = steps[0][1].compile('<', 0)

        def fixed_only(data: Buffer) -> Sequence:
            return layout.unpack_from(data, _ENCAPSULATION_HEADER)
        return fixed_only
    if shape != ['fixed', _STRING, 'fixed']:
        return None
    head = steps[0][1].compile('<', 0)
    # the head, padding to 4, then the string's length: one struct at the payload's start
    head_and_length = struct.Struct(head.format + 'x' * (-head.size % 4) + 'I')
    text_start = _ENCAPSULATION_HEADER + head_and_length.size
    tails = [steps[2][1].compile('<', start) for start in range(8)]

    def header_and_fixed(data: Buffer) -> Sequence:
        *members, length = head_and_length.unpack_from(data, _ENCAPSULATION_HEADER)
        offset = text_start + length
        members.extend(tails[(offset - _ENCAPSULATION_HEADER) % 8].unpack_from(data, offset))
        return members
    return header_and_fixed


def members_read(spec: InputSpec) -> tuple[str, ...]:
    """The members of ``spec.msg_type`` that :func:`cdr_reader` reads for ``spec``, in wire
    order (paths as in :data:`LAYOUTS`): the fields, the header stamp, a scan's geometry, the
    measurement's own limits (``spec.limit_members``)."""
    if spec.msg_type not in LAYOUTS:
        raise ValueError(f'no CDR layout for {spec.msg_type!r}')
    paths = [path for path, _ in LAYOUTS[spec.msg_type]]
    unknown = [field for field in spec.fields if field not in paths]
    if unknown:
        raise ValueError(f'{spec.msg_type} has no member {unknown[0]!r}')
    geometry = ('angle_min', 'angle_increment') if spec.sectors is not None else ()
    limits = spec.limit_members[1:] if spec.limit_members is not None else ()
    wanted = set(spec.fields) | set(geometry) | set(limits) | (
        {'header.stamp.sec', 'header.stamp.nanosec'} if paths[0] == 'header.stamp.sec'
        else set())
    return tuple(path for path in paths if path in wanted)


def cdr_reader(spec: InputSpec) -> Callable[[Buffer], Reading]:
    """``data -> (stamp_ns, values)`` for serialized messages of ``spec.msg_type``.

    ``stamp_ns`` is the header stamp in integer nanoseconds (None for a type without a header or
    a zero stamp, as :func:`features.message_stamp_ns`); ``values`` is exactly
    ``extract_values(deserialised message, spec)``, float64 (k,). Raises
    :class:`UnsupportedEncapsulation` for encodings other than plain CDR (deserialise those) and
    :class:`CdrError` for bytes that end too early.
    """
    in_wire_order = members_read(spec)
    has_header = in_wire_order[0] == 'header.stamp.sec'
    geometry = ('angle_min', 'angle_increment') if spec.sectors is not None else ()
    steps = _program(spec.msg_type, in_wire_order)
    # where each needed member lands in the values read (wire order)
    field_index = [in_wire_order.index(field) for field in spec.fields]
    geometry_index = [in_wire_order.index(name) for name in geometry]
    limit_members = spec.limit_members
    limit_index = ([in_wire_order.index(name) for name in limit_members[1:]]
                   if limit_members is not None else [])
    # a Range's measured value among the values read (the limits apply to it alone)
    measured_field = limit_members[0] if limit_members is not None else ''
    measured = spec.fields.index(measured_field) if limit_members is not None else None
    kinds = dict(LAYOUTS[spec.msg_type])
    # A sequence field is an input's only field (FeatureConfig refuses others next to it).
    sequence_only = kinds[spec.fields[0]] in _VARIABLE
    # the infinity mappings of prepare_values, for scalars: value -> what it reads as
    infinities = {value: mapped for value, mapped in ((math.inf, spec.posinf_value),
                                                      (-math.inf, spec.neginf_value))
                  if mapped is not None}

    little_endian = _little_endian_reader(steps)

    def read(data: Buffer) -> Reading:
        if little_endian is not None and data[:2] == _CDR_LE:
            try:
                members = little_endian(data)
            except struct.error as exc:
                encapsulation_byte_order(data)  # too short for its own header: unsupported
                raise CdrError(f'message of {len(data)} bytes is truncated: {exc}') from exc
        else:
            members = _read_members(steps, data)
        stamp_ns = None
        if has_header:
            stamp_ns = members[0] * _NS_PER_S + members[1] or None
        limits = (members[limit_index[0]], members[limit_index[1]]) if limit_index else None
        if sequence_only:
            raw = members[field_index[0]]
            if not geometry_index:
                return stamp_ns, prepare_values(raw, spec, limits=limits)
            angle_min, angle_increment = (members[index] for index in geometry_index)
            return stamp_ns, prepare_values(raw, spec, angle_min=angle_min,
                                            angle_increment=angle_increment, limits=limits)
        # scalars: the limits and the infinity mappings on the list, then one float64 array
        # (what prepare_values gives, without its array calls)
        values = [members[index] for index in field_index]
        if limits is not None:
            check_limits(values[measured], limits[0], limits[1], measured_field)
        if infinities:
            values = [infinities.get(value, value) for value in values]
        return stamp_ns, np.array(values, dtype=np.float64)

    return read
