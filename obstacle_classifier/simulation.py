"""A seeded sidewalk world with raw sensor streams and ground truth, for training without a robot.

The robot drives along a 3.2 m sidewalk (+y to the left) over surfaces that change along the route
(asphalt, brick, gravel, grass; road asphalt at crossings), at a cruise speed that varies, slows
for what is in its path and steers around it once within 2.5 m, then returns to the middle.
Obstacles come and go, several at once; each class has its own signature:

=========== ======================== ================= ========================== ===============
class       seen by sonar / lidar    where             motion                     sound
=========== ======================== ================= ========================== ===============
pedestrian  0.45-0.6 m body / legs   middle or edges   walking both ways (legs    footsteps,
            that swing                                 swing), or standing        voices
bicycle     1.7 m long, wheels and   middle; passes    3.5-6 m/s, oncoming or     tyres, a bell
            feet at the scan plane   on the side       overtaking
trash_can   0.5-0.7 m, strong echo   edges or middle   static                     silent
pole        0.1-0.25 m, weak echo    kerb or middle    static                     silent
dog         0.2-0.3 m; small dogs    with its owner,   trotting, nosing about,    panting,
            are under the scan plane or loose          stops to sniff             barking
scooter     ridden: rider's legs;    middle; parked    ridden 4-7 m/s, or parked  motor whine
            parked: a thin stem with anywhere          (static)                   (ridden)
            a strong deck echo
barrier     1.2-1.8 m panel          from one edge     static                     often a
                                                                                  working site
curb        kerbs across the route,  road crossings    static                     road traffic
            below the scan plane
=========== ======================== ================= ========================== ===============

Moving obstacles step aside for the robot when it comes within 3.5 m; walls and parked cars line
the sides (but not the crossings) and are seen but never labelled.

Sensors, each at its own rate and phase with small timing jitter, values as the message carries
them (float32 where the message field is float32):

* three ultrasonic range sensors (front, and front-left / front-right at +-50 degrees): 4 m max
  range, 25 degree cone, Gaussian noise, missed echoes (weak reflectors more often) and dropouts
  as +inf (REP 117's "no return"), occasional cross-talk spikes;
* IMU (linear acceleration, angular velocity, orientation): vibration set by the surface and the
  speed, braking, turning, a ring-down over each kerb;
* wheel-odometry speed with noise and slip; the noise level in dB (background traffic, passing
  vehicles, the robot's motors, the obstacles' sounds, all summed in power);
* a planar lidar 0.35 m above ground emitting the full LaserScan ``ranges`` (181 beams over the
  front 180 degrees, geometry in :data:`LIDAR_ANGLE_MIN` / :data:`LIDAR_ANGLE_INCREMENT`) for
  the feature pipeline to reduce to sectors.

The microphone and the lidar drop out now and then for a second or three (their inputs then go
stale, and the pipeline fills and flags them).

Ground truth: multi-hot over :data:`CLASS_NAMES`, the classes of obstacles in the robot's path now:
near face at most :data:`PATH_LOOKAHEAD_M` ahead, far face not yet passed, overlapping the
robot's corridor (:data:`CORRIDOR_HALF_WIDTH` either side of its centre line). The world and each
sensor draw from their own random streams, so the readings depend neither on how ``advance`` is
chunked nor on which sensors a config selects.
"""
from __future__ import annotations

import bisect
import math
import operator
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from obstacle_classifier.features import (FeatureConfig, FeaturePipeline, load_default_config,
                                          prepare_values, replay)

__all__ = [
    'CLASS_NAMES', 'LIDAR_ANGLE_INCREMENT', 'LIDAR_ANGLE_MAX', 'LIDAR_ANGLE_MIN', 'LIDAR_BEAMS',
    'LIDAR_RANGE_MAX', 'LIDAR_RANGE_MIN', 'RANGE_FIELD_OF_VIEW', 'RANGE_MAX', 'RANGE_MIN',
    'SCENARIOS', 'SENSOR_MSG_TYPES', 'SENSOR_RATES_HZ', 'SURFACES', 'Reading',
    'SidewalkSimulator', 'SimulatedDataset', 'simulate_dataset',
]

CLASS_NAMES = ('pedestrian', 'bicycle', 'trash_can', 'pole', 'dog', 'scooter', 'barrier', 'curb')
SCENARIOS = ('default', 'quiet', 'busy')
SURFACES = ('asphalt', 'brick', 'gravel', 'grass')
(PEDESTRIAN, BICYCLE, TRASH_CAN, POLE, DOG, SCOOTER, BARRIER, CURB) = range(len(CLASS_NAMES))
_SCENERY = -1  # walls and parked cars: seen by the sensors, never a label

# --- sensors: message constants the simulator node needs to fill in messages ---------------------
RANGE_MIN = 0.02                                    # m (sensor_msgs/Range.min_range)
RANGE_MAX = 4.0                                     # m (max_range); beyond it: +inf
RANGE_FIELD_OF_VIEW = float(np.float32(math.radians(25.0)))  # rad, float32 as in the message
LIDAR_BEAMS = 181
LIDAR_ANGLE_MIN = float(np.float32(-math.pi / 2))   # float32-exact: what a LaserScan carries
LIDAR_ANGLE_MAX = float(np.float32(math.pi / 2))
LIDAR_ANGLE_INCREMENT = float(np.float32(math.pi / (LIDAR_BEAMS - 1)))
LIDAR_RANGE_MIN = 0.05
LIDAR_RANGE_MAX = 12.0
LIDAR_HEIGHT_M = 0.35                               # the scan plane: lower objects are unseen

SENSOR_RATES_HZ = {'range_front': 25.0, 'range_left': 20.0, 'range_right': 20.0, 'imu': 100.0,
                   'speed': 50.0, 'noise': 10.0, 'lidar': 10.0}
SENSOR_MSG_TYPES = {
    'range_front': 'sensor_msgs/msg/Range', 'range_left': 'sensor_msgs/msg/Range',
    'range_right': 'sensor_msgs/msg/Range', 'imu': 'sensor_msgs/msg/Imu',
    'speed': 'std_msgs/msg/Float64', 'noise': 'std_msgs/msg/Float32',
    'lidar': 'sensor_msgs/msg/LaserScan'}
_IMU_FIELDS = ('linear_acceleration.x', 'linear_acceleration.y', 'linear_acceleration.z',
               'angular_velocity.x', 'angular_velocity.y', 'angular_velocity.z',
               'orientation.x', 'orientation.y', 'orientation.z', 'orientation.w')

# --- world geometry and robot --------------------------------------------------------------------
DT_NS = 25_000_000                  # physics step: 25 ms (ticks at 20 or 40 Hz land on steps)
_DT = DT_NS / 1e9
SIDEWALK_HALF_WIDTH = 1.6           # m: a 3.2 m urban sidewalk
ROBOT_HALF_WIDTH = 0.3
CORRIDOR_HALF_WIDTH = 0.45          # the robot's swept half-width plus a margin: its "path"
PATH_LOOKAHEAD_M = 5.0              # an obstacle is "in the path" if its near face is this close
ROBOT_LENGTH = 0.7
# The robot steers around things only this close: until then what is ahead stays centred in its
# sensors, and the label does not flicker with every small swerve.
_SWERVE_LOOKAHEAD_M = 2.5
_LABEL_HISTORY_STEPS = 400          # labels_at() reaches 10 s back
_GENERATE_AHEAD_M = 45.0
_FORGET_BEHIND_M = 25.0
_G = 9.81

# Surface: vibration gain (m/s^2 per m/s), AR(1) coefficient of the vibration (higher = lower
# frequency), heavy-tailed shocks, brick-joint spacing (m), cruise-speed factor, odometry slip.
_SURFACE_PHYSICS = {
    'asphalt': dict(gain=0.15, ar=0.30, heavy_tail=False, joint_m=None, speed=1.00, slip=0.00),
    'brick': dict(gain=0.35, ar=0.50, heavy_tail=False, joint_m=0.2, speed=0.95, slip=0.00),
    'gravel': dict(gain=0.70, ar=0.40, heavy_tail=True, joint_m=None, speed=0.80, slip=0.03),
    'grass': dict(gain=0.45, ar=0.85, heavy_tail=False, joint_m=None, speed=0.70, slip=0.05),
}
_SURFACE_WEIGHTS = (0.40, 0.25, 0.15, 0.20)

# Scenario: background level and how often things happen. Static densities are per 100 m of
# route, moving spawn rates per minute.
_SCENARIO_PARAMS = {
    'default': dict(background_db=50.0, vehicles_per_min=3.0, moving_scale=1.0,
                    static_scale=1.0),
    'quiet': dict(background_db=42.0, vehicles_per_min=1.0, moving_scale=0.45,
                  static_scale=0.7),
    'busy': dict(background_db=60.0, vehicles_per_min=10.0, moving_scale=2.0,
                 static_scale=1.3),
}
_STATIC_PER_100M = {TRASH_CAN: 7.0, POLE: 8.0, BARRIER: 2.5, CURB: 0.7, SCOOTER: 3.0}
_MOVING_PER_MIN = {PEDESTRIAN: 4.0, DOG: 1.5, BICYCLE: 4.0, SCOOTER: 2.5}


# ------------------------------------------------------------------------------------------------
# Public records
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Reading:
    """One raw sensor reading, as its message would carry it.

    Attributes:
        input_name: the feature-config input it feeds (e.g. 'range_front').
        stamp_ns: acquisition time, integer nanoseconds of simulated time.
        values: the config's fields in order: range (1,) float32 metres or +inf; IMU (k,) float64;
            speed (1,) float64; noise (1,) float32 dB; lidar (181,) float32 ``ranges`` (geometry in
            :data:`LIDAR_ANGLE_MIN` / :data:`LIDAR_ANGLE_INCREMENT`).
    """

    input_name: str
    stamp_ns: int
    values: np.ndarray


@dataclass
class SimulatedDataset:
    """Features and ground truth at the tick times of a simulated run.

    Attributes:
        X: float64 (n, d) features in ``feature_names`` order.
        Y: uint8 (n, c) multi-hot labels in ``class_names`` order.
        feature_names: (d,) names from the feature config.
        class_names: (c,) :data:`CLASS_NAMES`.
        stamps_ns: int64 (n,) tick times.
        skipped_ticks: ticks the pipeline skipped (not in X).
    """

    X: np.ndarray
    Y: np.ndarray
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    stamps_ns: np.ndarray
    skipped_ticks: int = 0

    def positive_rates(self) -> dict[str, float]:
        """Fraction of ticks on which each class is present."""
        rates = self.Y.mean(axis=0) if len(self.Y) else np.zeros(len(self.class_names))
        return {name: float(rate) for name, rate in zip(self.class_names, rates)}


# ------------------------------------------------------------------------------------------------
# World internals
# ------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class _Obstacle:
    """A box on the sidewalk. ``s`` is along the route, ``y`` across (+ left), both of its centre.

    The sonar sees the full body (``half_length`` x ``half_width``); the lidar sees the
    cross-section at its scan height (``lidar_half_*``), or nothing when that is None.
    """

    kind: int
    s: float
    y: float
    half_length: float
    half_width: float
    lidar_half_length: float | None
    lidar_half_width: float | None
    echo: float                      # probability that a sonar ping returns from it
    low: bool = False                # below 0.2 m: the sonars see it only within 3.5 m
    speed: float = 0.0               # along the route, m/s (signed)
    lateral_speed: float = 0.0
    home_y: float = 0.0              # lateral position it drifts back to after dodging
    dodge_speed: float = 0.5
    sound_db: float = 0.0            # current level at 1 m; 0 = silent
    quiet_db: float = 0.0            # level between sound events
    loud_db: float = 0.0             # level during a sound event (voice, bark, bell, hammer)
    loud: bool = False
    next_sound_event: float = math.inf
    sound_on_s: tuple[float, float] = (0.0, 0.0)   # mean durations of loud / quiet spells
    owner: _Obstacle | None = None   # a leashed dog follows its owner
    leash: tuple[float, float] = (0.0, 0.0)
    wander: tuple[float, float, float] = (0.0, 0.0, 0.0)  # amplitude m, frequency Hz, phase
    next_stop_event: float = math.inf
    cruise_speed: float = 0.0
    rang_bell: bool = False
    pass_lane: float | None = None   # an overtaker's lane once it is ahead of the robot
    dodged: bool = False             # has stepped aside for the robot
    gait: tuple[float, float] = (0.0, 0.0)  # legs at the scan height: stride m, steps per s


@dataclass
class _NormalPool:
    """Standard normals drawn in blocks of 1024: one Generator call instead of 1024."""

    rng: np.random.Generator
    block: np.ndarray = field(default_factory=lambda: np.empty(0))
    position: int = 0

    def next(self) -> float:
        if self.position == self.block.shape[0]:
            self.block = self.rng.standard_normal(1024)
            self.position = 0
        value = self.block[self.position]
        self.position += 1
        return float(value)


@dataclass
class _SensorClock:
    """Stamps on a nominal grid (phase + k * period) plus a small jitter: strictly increasing."""

    name: str
    period_ns: int
    rng: np.random.Generator
    phase_ns: int
    index: int = 0
    next_stamp: int = 0
    jitter: _NormalPool | None = None

    def schedule(self) -> None:
        if self.jitter is None:
            self.jitter = _NormalPool(self.rng)
        jitter = _clamp(0.02 * self.jitter.next(), -0.2, 0.2)
        self.next_stamp = self.phase_ns + self.index * self.period_ns + int(
            round(jitter * self.period_ns))
        self.index += 1


def _clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def _ray_box_distances(origin_x: np.ndarray | float, origin_y: np.ndarray | float,
                       cos: np.ndarray, sin: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Distance along every ray to every axis-aligned box (the slab test).

    Args:
        origin_x, origin_y: ray origins in the robot frame (m), scalars or (r,).
        cos, sin: (r,) ray directions; no component is exactly zero (see ``_directions``).
        boxes: (b, 4) boxes as columns x0, x1, y0, y1 (m).

    Returns:
        (r, b) distances: +inf where the ray misses the box, 0 where it starts inside it.
    """
    origin_x = np.reshape(origin_x, (-1, 1))
    origin_y = np.reshape(origin_y, (-1, 1))
    inv_cos = (1.0 / cos)[:, np.newaxis]
    inv_sin = (1.0 / sin)[:, np.newaxis]
    tx0 = (boxes[:, 0] - origin_x) * inv_cos
    tx1 = (boxes[:, 1] - origin_x) * inv_cos
    ty0 = (boxes[:, 2] - origin_y) * inv_sin
    ty1 = (boxes[:, 3] - origin_y) * inv_sin
    t_enter = np.maximum(np.minimum(tx0, tx1), np.minimum(ty0, ty1))
    t_exit = np.minimum(np.maximum(tx0, tx1), np.maximum(ty0, ty1))
    hit = (t_exit >= t_enter) & (t_exit > 0.0)
    return np.where(hit, np.maximum(t_enter, 0.0), np.inf)


def _directions(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of ray angles, nudged off exact zero so the slab test never divides by 0."""
    cos, sin = np.cos(angles), np.sin(angles)
    cos = np.where(np.abs(cos) < 1e-12, 1e-12, cos)
    sin = np.where(np.abs(sin) < 1e-12, 1e-12, sin)
    return cos, sin


_LIDAR_COS, _LIDAR_SIN = _directions(
    LIDAR_ANGLE_MIN + LIDAR_ANGLE_INCREMENT * np.arange(LIDAR_BEAMS, dtype=np.float64))
_SONAR_CONE_RAYS = np.radians(np.linspace(-12.5, 12.5, 5))
# name -> (mount x, mount y, mount yaw) in the robot frame (origin: centre of the front bumper)
_SONAR_MOUNTS = {'range_front': (0.0, 0.0, 0.0),
                 'range_left': (-0.05, 0.25, math.radians(50.0)),
                 'range_right': (-0.05, -0.25, math.radians(-50.0))}
_SONAR_NAMES = tuple(_SONAR_MOUNTS)
_SONAR_RAYS_PER_SENSOR = _SONAR_CONE_RAYS.shape[0]
# All sonar rays of all sensors, traced together once per physics step.
_SONAR_COS, _SONAR_SIN = _directions(np.concatenate(
    [yaw + _SONAR_CONE_RAYS for _, _, yaw in _SONAR_MOUNTS.values()]))
_SONAR_ORIGIN_X = np.repeat([x for x, _, _ in _SONAR_MOUNTS.values()], _SONAR_RAYS_PER_SENSOR)
_SONAR_ORIGIN_Y = np.repeat([y for _, y, _ in _SONAR_MOUNTS.values()], _SONAR_RAYS_PER_SENSOR)
_LOW_OBSTACLE_VISIBLE_M = 3.5   # the sonar cones reach the ground (and kerbs) only this close
_OUTAGE_EVERY_S = 90.0          # mean time between microphone (and lidar) outages


class SidewalkSimulator:
    """The seeded sidewalk world; ``advance`` returns the raw readings of the configured sensors.

    Args:
        seed: the same seed (and scenario, config) gives the same readings, bit for bit.
        scenario: one of :data:`SCENARIOS`.
        config: which sensors to simulate and which fields they carry (default: the default
            feature config). Every input must be one of :data:`SENSOR_RATES_HZ` with the same
            message type.
    """

    def __init__(self, seed: int = 0, scenario: str = 'default',
                 config: FeatureConfig | None = None):
        if scenario not in SCENARIOS:
            raise ValueError(f'unknown scenario {scenario!r} (known: {", ".join(SCENARIOS)})')
        self.config = config if config is not None else load_default_config()
        self.scenario = scenario
        self.seed = seed
        self.class_names = CLASS_NAMES
        self._params = _SCENARIO_PARAMS[scenario]
        self._value_builders = self._build_value_builders(self.config)
        streams = np.random.SeedSequence([seed, SCENARIOS.index(scenario)]).spawn(
            1 + len(SENSOR_RATES_HZ))
        self._rng = np.random.default_rng(streams[0])
        self._normals = _NormalPool(self._rng)
        self._clocks: list[_SensorClock] = []
        for stream, (name, rate_hz) in zip(streams[1:], SENSOR_RATES_HZ.items()):
            if name not in self._value_builders:
                continue
            rng = np.random.default_rng(stream)
            period_ns = int(round(1e9 / rate_hz))
            clock = _SensorClock(name, period_ns, rng,
                                 phase_ns=int(rng.integers(period_ns // 4, period_ns)))
            clock.schedule()
            self._clocks.append(clock)
        self._sensor_rng = {clock.name: clock.rng for clock in self._clocks}

        self.now_ns = 0
        self._step = 0
        # Robot state (s at the front bumper, where the sensors are).
        self._s = 0.0
        self._y = 0.0
        self._v = 0.0
        self._lateral_v = 0.0
        self._accel = 0.0
        self._yaw = 0.0
        self._yaw_rate = 0.0
        self._cruise = 1.3
        self._next_cruise_change = 0.0
        self._stopped_for = 0.0
        self._jolt_time = -math.inf
        # World state.
        self._surface_starts: list[float] = []
        self._surfaces: list[str] = []
        self._static: list[_Obstacle] = []
        self._moving: list[_Obstacle] = []
        self._scenery: list[_Obstacle] = []
        self._generated_to = -20.0
        self._next_static = {kind: self._static_gap(kind) for kind in _STATIC_PER_100M}
        self._next_spawn = {kind: self._moving_gap(kind) for kind in _MOVING_PER_MIN}
        self._next_wall = 0.0
        self._next_cars = self._rng.uniform(0.0, 30.0)
        self._background_db = self._params['background_db']
        self._vehicle_passes: list[tuple[float, float]] = []  # (time of closest pass, peak dB)
        self._next_vehicle = self._rng.exponential(60.0 / self._params['vehicles_per_min'])
        self._outage_until = {'noise': -1.0, 'lidar': -1.0}
        self._next_outage = {name: self._rng.exponential(_OUTAGE_EVERY_S)
                             for name in self._outage_until}
        self._labels = np.zeros((_LABEL_HISTORY_STEPS, len(CLASS_NAMES)), dtype=np.uint8)
        self._in_path: list[tuple[float, int]] = []
        self._boxes_step = -1
        self._boxes: dict[str, np.ndarray] = {}
        self._echoes_step = -1
        self._echoes: dict[str, tuple[float, float]] = {}
        self._imu_state = [0.0] * 5
        self._brick_phase = 0.0
        self._crossings: list[tuple[float, float]] = []
        self._target_speed = 0.0
        self._target_lateral_v = 0.0
        self._line = 0.0   # the lateral line the robot drives (it swerves onto clear lines)
        self._extend_world(self._s + _GENERATE_AHEAD_M)
        self._observe_and_decide()

    # -- public -----------------------------------------------------------------------------------

    @property
    def surface(self) -> str:
        """The surface under the robot now."""
        return self._surface_at(self._s)

    @property
    def robot_speed(self) -> float:
        """The robot's true speed now (m/s)."""
        return self._v

    def advance(self, until_ns: int) -> list[Reading]:
        """Simulate up to ``until_ns``; every reading stamped in (now_ns, until_ns], in order."""
        until = operator.index(until_ns)
        if until < self.now_ns:
            raise ValueError(f'cannot go back in time: now {self.now_ns} ns, asked {until} ns')
        readings: list[Reading] = []
        while True:
            step_end = (self._step + 1) * DT_NS
            limit = min(until, step_end - 1)
            batch = []
            for clock in self._clocks:
                while clock.next_stamp <= limit:
                    values = self._measure(clock.name, clock.next_stamp)
                    if values is not None:
                        batch.append(Reading(clock.name, clock.next_stamp, values))
                    clock.schedule()
            if batch:
                batch.sort(key=operator.attrgetter('stamp_ns'))
                readings.extend(batch)
            if step_end > until:
                break
            self._step_physics()
        self.now_ns = until
        return readings

    def labels_at(self, t_ns: int) -> np.ndarray:
        """uint8 (c,) multi-hot truth at ``t_ns``: the world state of the physics step then.

        Available for the last 10 s of simulated time up to ``now_ns``.
        """
        step = operator.index(t_ns) // DT_NS
        if not self._step - _LABEL_HISTORY_STEPS < step <= self._step:
            raise ValueError(f'labels_at({t_ns}): only the last {_LABEL_HISTORY_STEPS * _DT:g} s '
                             f'up to now ({self.now_ns} ns) are kept')
        return self._labels[step % _LABEL_HISTORY_STEPS].copy()

    def obstacles_in_path(self) -> list[str]:
        """Classes in the robot's path now, nearest first, each once (for display)."""
        names: list[str] = []
        for _, kind in sorted(self._in_path):
            if CLASS_NAMES[kind] not in names:
                names.append(CLASS_NAMES[kind])
        return names

    # -- configuration ----------------------------------------------------------------------------

    @staticmethod
    def _build_value_builders(config: FeatureConfig) -> dict[str, Callable]:
        """Per configured sensor: how to turn the simulated quantities into the config's fields."""
        builders: dict[str, Callable] = {}
        for spec in config.inputs:
            expected = SENSOR_MSG_TYPES.get(spec.name)
            if expected is None:
                raise ValueError(f'{config.source}: the simulator has no sensor {spec.name!r} '
                                 f'(simulated: {", ".join(SENSOR_RATES_HZ)})')
            if spec.msg_type != expected:
                raise ValueError(f'{config.source}: input {spec.name!r} is {spec.msg_type}, the '
                                 f'simulator publishes {expected}')
            if expected == 'sensor_msgs/msg/Range':
                constants = {'min_range': RANGE_MIN, 'max_range': RANGE_MAX,
                             'field_of_view': RANGE_FIELD_OF_VIEW}
                fields = spec.fields

                def build_range(distance: float, fields=fields, constants=constants):
                    return np.array([distance if path == 'range' else constants[path]
                                     for path in fields], dtype=np.float32)
                builders[spec.name] = build_range
            elif expected == 'sensor_msgs/msg/Imu':
                index = np.array([_IMU_FIELDS.index(path) for path in spec.fields])
                builders[spec.name] = lambda vector, index=index: vector[index]
            elif expected == 'sensor_msgs/msg/LaserScan':
                if spec.fields != ('ranges',):
                    raise ValueError(f'{config.source}: the simulated lidar provides only '
                                     f"'ranges', input {spec.name!r} reads {list(spec.fields)}")
                builders[spec.name] = lambda ranges: ranges
            elif expected == 'std_msgs/msg/Float32':
                builders[spec.name] = lambda value: np.array([value], dtype=np.float32)
            else:
                builders[spec.name] = lambda value: np.array([value], dtype=np.float64)
        return builders

    # -- world generation -------------------------------------------------------------------------

    def _static_gap(self, kind: int) -> float:
        density = _STATIC_PER_100M[kind] * self._params['static_scale']
        return float(self._rng.exponential(100.0 / density))

    def _moving_gap(self, kind: int) -> float:
        rate = _MOVING_PER_MIN[kind] * self._params['moving_scale']
        return float(self._rng.exponential(60.0 / rate))

    def _surface_at(self, s: float) -> str:
        index = bisect.bisect_right(self._surface_starts, s) - 1
        return self._surfaces[max(index, 0)]

    def _extend_world(self, up_to: float) -> None:
        """Lay out surfaces, static obstacles and scenery along the route up to ``up_to``."""
        rng = self._rng
        while not self._surface_starts or self._surface_starts[-1] < up_to:
            start = self._surface_starts[-1] + rng.uniform(15.0, 70.0) if self._surfaces \
                else -50.0
            previous = self._surfaces[-1] if self._surfaces else None
            choices = [i for i, name in enumerate(SURFACES) if name != previous]
            weights = np.array([_SURFACE_WEIGHTS[i] for i in choices])
            surface = SURFACES[choices[rng.choice(len(choices), p=weights / weights.sum())]]
            self._surface_starts.append(start)
            self._surfaces.append(surface)
        candidates = []  # every kind's own Poisson stream, placed in route order
        for kind in _STATIC_PER_100M:
            while self._next_static[kind] < up_to:
                candidates.append((self._next_static[kind], kind))
                self._next_static[kind] += self._static_gap(kind)
        for s, kind in sorted(candidates):
            self._place_static(kind, s)
        while self._next_wall < up_to:  # building facades on the left, with gaps
            length = rng.uniform(15.0, 60.0)
            self._scenery.append(_Obstacle(
                _SCENERY, self._next_wall + length / 2, SIDEWALK_HALF_WIDTH + 0.55, length / 2,
                0.25, length / 2, 0.25, echo=0.95))
            self._next_wall += length + rng.uniform(3.0, 25.0)
        while self._next_cars < up_to:  # parked cars beyond the right-hand kerb
            for _ in range(int(rng.integers(1, 5))):
                self._scenery.append(_Obstacle(
                    _SCENERY, self._next_cars + 2.3, -SIDEWALK_HALF_WIDTH - 1.2, 2.3, 0.9, 2.3,
                    0.9, echo=0.9))
                self._next_cars += rng.uniform(5.0, 6.5)
            self._next_cars += rng.uniform(10.0, 60.0)
        for start, stop in self._crossings:
            self._clear_scenery(start - 2.0, stop + 2.0)
        self._generated_to = up_to

    def _lane(self, centre_share: float) -> float:
        """A lateral position: the middle of the sidewalk (the robot's lane), or near an edge."""
        rng = self._rng
        if rng.random() < centre_share:
            return float(rng.uniform(-0.3, 0.3))
        return float(rng.choice((-1.0, 1.0)) * rng.uniform(0.95, 1.15))

    def _place_static(self, kind: int, s: float) -> None:
        rng = self._rng
        if kind != CURB:  # keep statics apart, and off the road, so the robot can get past
            if any(other.kind != CURB and abs(other.s - s) < 2.5 for other in self._static):
                return
            if any(start - 3.0 < s < stop + 3.0 for start, stop in self._crossings):
                return
        edge_side = 1.0 if rng.random() < 0.5 else -1.0
        if kind == TRASH_CAN:  # against a wall or the kerb, or put out in the middle
            half = rng.uniform(0.25, 0.35)
            y = (edge_side * (SIDEWALK_HALF_WIDTH - half - rng.uniform(0.0, 0.1))
                 if rng.random() < 0.4 else rng.uniform(-0.3, 0.3))
            obstacle = _Obstacle(kind, s, y, half, half, half, half, echo=0.95)
        elif kind == POLE:  # lamp posts at the kerb; bollards and sign posts in the middle
            radius = rng.uniform(0.05, 0.12)
            y = (edge_side * rng.uniform(1.3, 1.45) if rng.random() < 0.5
                 else rng.uniform(-0.3, 0.3))
            obstacle = _Obstacle(kind, s, y, radius, radius, radius, radius, echo=0.45)
        elif kind == BARRIER:  # a construction panel from one edge across most of the sidewalk
            half_width = rng.uniform(0.6, 0.9)
            half_length = rng.uniform(0.1, 0.3)
            y = edge_side * (SIDEWALK_HALF_WIDTH - half_width)
            obstacle = _Obstacle(kind, s, y, half_length, half_width, half_length, half_width,
                                 echo=0.9)
            if rng.random() < 0.7:  # a working site behind it
                obstacle.quiet_db, obstacle.loud_db = 0.0, 82.0
                obstacle.sound_on_s = (3.0, 5.0)
                obstacle.next_sound_event = 0.0
        elif kind == SCOOTER:  # parked: a thin stem at the lidar height, a strong deck echo
            along = rng.random() < 0.5
            half_length, half_width = (0.55, 0.12) if along else (0.12, 0.55)
            y = (rng.uniform(-0.3, 0.3) if rng.random() < 0.6
                 else edge_side * (SIDEWALK_HALF_WIDTH - half_width - 0.1))
            obstacle = _Obstacle(kind, s, y, half_length, half_width, 0.03, 0.03, echo=0.85)
        else:  # CURB: a road crossing, kerb down then kerb up after the road
            road = rng.uniform(7.0, 10.0)
            for kerb_s in (s, s + road):
                self._static.append(_Obstacle(CURB, kerb_s, 0.0, 0.15, SIDEWALK_HALF_WIDTH + 1.0,
                                              None, None, echo=0.8, low=True))
            self._crossings.append((s, s + road))
            self._clear_scenery(s - 2.0, s + road + 2.0)  # no walls or parked cars at a crossing
            resume = self._surface_at(s + road)  # the road is asphalt; the sidewalk resumes after
            segments = [(start, name) for start, name in zip(self._surface_starts, self._surfaces)
                        if not s <= start <= s + road]
            segments += [(s, 'asphalt'), (s + road, resume)]
            segments.sort(key=operator.itemgetter(0))
            self._surface_starts = [start for start, _ in segments]
            self._surfaces = [name for _, name in segments]
            return
        self._static.append(obstacle)

    def _clear_scenery(self, start: float, stop: float) -> None:
        """Cut walls and parked cars out of [start, stop] along the route."""
        kept = []
        for box in self._scenery:
            low, high = box.s - box.half_length, box.s + box.half_length
            if high <= start or low >= stop:
                kept.append(box)
                continue
            for piece_low, piece_high in ((low, start), (stop, high)):
                if piece_high - piece_low > 0.5:
                    half = (piece_high - piece_low) / 2
                    kept.append(_Obstacle(_SCENERY, piece_low + half, box.y, half,
                                          box.half_width, half, box.lidar_half_width,
                                          echo=box.echo))
        self._scenery = kept

    def _spawn_moving(self, kind: int, now: float) -> None:
        rng = self._rng
        s_robot, v_robot = self._s, self._v
        if kind == PEDESTRIAN:
            lane = self._lane(0.5)
            mode = rng.random()
            if mode < 0.5:
                s, speed = s_robot + rng.uniform(18.0, 25.0), -rng.uniform(1.0, 1.6)
            elif mode < 0.85:
                s, speed = s_robot + rng.uniform(8.0, 16.0), rng.uniform(0.5, 1.0)
            else:  # waiting at a door or looking at a phone
                s, speed = s_robot + rng.uniform(10.0, 20.0), 0.0
            walkers = [self._new_pedestrian(s, lane, speed, now)]
            if rng.random() < 0.2:  # walking side by side
                other_lane = lane - 0.6 if lane > 0 else lane + 0.6
                walkers.append(self._new_pedestrian(s + rng.uniform(-0.4, 0.4), other_lane,
                                                    speed, now))
            self._moving.extend(walkers)
            if rng.random() < 0.3:
                self._moving.append(self._new_dog(walkers[0], now))
        elif kind == DOG:
            speed = rng.uniform(1.5, 3.0) * (1 if rng.random() < 0.5 else -1)
            s = s_robot + (rng.uniform(10.0, 18.0) if speed > 0 else rng.uniform(18.0, 28.0))
            self._moving.append(self._new_dog(None, now, s, self._lane(0.5), speed))
        else:  # BICYCLE or SCOOTER ridden on the sidewalk, oncoming or overtaking
            low, high = (3.5, 6.0) if kind == BICYCLE else (4.0, 7.0)
            pass_lane = None
            if rng.random() < 0.5:
                lane = self._lane(0.6)
                s, speed = s_robot + rng.uniform(30.0, 40.0), -rng.uniform(low, high)
            else:  # passes on one side, then takes the middle again
                lane = float(rng.choice((-1.0, 1.0)) * rng.uniform(1.0, 1.15))
                pass_lane = float(rng.uniform(-0.3, 0.3))
                s = s_robot - rng.uniform(15.0, 25.0)
                speed = max(rng.uniform(low, high), v_robot + 1.5)
            if kind == BICYCLE:  # wheels, cranks and the rider's feet at the scan height
                rider = _Obstacle(kind, s, lane, 0.85, 0.3, 0.85, 0.15, echo=0.7,
                                  quiet_db=58.0, loud_db=80.0)
            else:  # the rider's legs on the deck
                rider = _Obstacle(kind, s, lane, 0.5, 0.25, 0.15, 0.12, echo=0.75,
                                  quiet_db=70.0, loud_db=70.0)
            rider.speed = rider.cruise_speed = speed
            rider.home_y = lane
            rider.pass_lane = pass_lane
            rider.dodge_speed = 1.5
            rider.sound_db = rider.quiet_db
            self._moving.append(rider)

    def _new_pedestrian(self, s: float, lane: float, speed: float, now: float) -> _Obstacle:
        rng = self._rng
        person = _Obstacle(PEDESTRIAN, s, lane, 0.18, rng.uniform(0.22, 0.3), 0.12, 0.17,
                           echo=0.75, speed=speed, home_y=lane, cruise_speed=speed)
        person.wander = (0.05, rng.uniform(0.8, 1.0), rng.uniform(0.0, 2 * math.pi))
        person.gait = (0.15, rng.uniform(1.6, 2.0))
        person.quiet_db = 50.0 if speed != 0.0 else 38.0   # footsteps
        person.sound_db = person.quiet_db
        if rng.random() < 0.7:  # talking, with pauses
            person.loud_db = 66.0
            person.sound_on_s = (2.5, 4.0)
            person.next_sound_event = now + rng.exponential(2.0)
        return person

    def _new_dog(self, owner: _Obstacle | None, now: float, s: float = 0.0, lane: float = 0.0,
                 speed: float = 0.0) -> _Obstacle:
        rng = self._rng
        big = rng.random() < 0.6  # small dogs pass under the lidar plane
        half_length, half_width = (0.35, 0.13) if big else (0.22, 0.09)
        if owner is not None:
            # Beside its owner: towards the middle of an owner by an edge, either side otherwise.
            side = -math.copysign(1.0, owner.y) if abs(owner.y) > 0.6 else rng.choice((-1.0, 1.0))
            leash = (rng.uniform(-0.8, 0.8), float(side) * rng.uniform(0.25, 0.4))
            s, lane, speed = owner.s + leash[0], owner.y + leash[1], owner.speed
        else:
            leash = (0.0, 0.0)
        dog = _Obstacle(DOG, s, lane, half_length, half_width,
                        half_length if big else None, half_width if big else None, echo=0.55,
                        speed=speed, home_y=lane, cruise_speed=speed, owner=owner, leash=leash,
                        dodge_speed=1.2)
        amplitude = rng.uniform(0.1, 0.2) if owner is not None else rng.uniform(0.2, 0.35)
        dog.wander = (amplitude, rng.uniform(0.2, 0.5), rng.uniform(0, 2 * math.pi))
        dog.gait = (0.1, rng.uniform(2.5, 3.5))
        dog.quiet_db = 42.0
        dog.sound_db = dog.quiet_db
        if rng.random() < 0.8:  # a barker: short loud barks
            dog.loud_db = 84.0
            dog.sound_on_s = (0.3, 2.5)
            dog.next_sound_event = now + rng.exponential(1.5)
        if owner is None:
            dog.next_stop_event = now + rng.exponential(6.0)  # stops to sniff, then runs on
        return dog

    # -- physics ----------------------------------------------------------------------------------

    def _step_physics(self) -> None:
        self._step += 1
        now = self._step * _DT
        rng = self._rng
        if self._s + _GENERATE_AHEAD_M > self._generated_to:
            self._extend_world(self._s + _GENERATE_AHEAD_M + 10.0)
            self._forget_behind()
        for kind in _MOVING_PER_MIN:
            if now >= self._next_spawn[kind]:
                self._spawn_moving(kind, now)
                self._next_spawn[kind] = now + self._moving_gap(kind)
        self._move_robot(now)
        for obstacle in self._moving:
            self._move_obstacle(obstacle, now)
        if any(math.isnan(obstacle.s) for obstacle in self._moving):
            self._moving = [obstacle for obstacle in self._moving if not math.isnan(obstacle.s)]
        for obstacle in self._static:
            if obstacle.next_sound_event <= now:
                self._toggle_sound(obstacle, now)
        self._update_environment(now)
        if now >= self._next_cruise_change:
            self._cruise = rng.uniform(0.9, 1.7)
            self._next_cruise_change = now + rng.uniform(10.0, 40.0)
        self._observe_and_decide()

    def _forget_behind(self) -> None:
        horizon = self._s - _FORGET_BEHIND_M
        self._static = [o for o in self._static if o.s + o.half_length > horizon]
        self._scenery = [o for o in self._scenery if o.s + o.half_length > horizon]
        self._crossings = [(start, stop) for start, stop in self._crossings if stop > horizon]
        keep = max(bisect.bisect_right(self._surface_starts, horizon) - 1, 0)
        del self._surface_starts[:keep]
        del self._surfaces[:keep]

    def _toggle_sound(self, obstacle: _Obstacle, now: float) -> None:
        obstacle.loud = not obstacle.loud
        obstacle.sound_db = obstacle.loud_db if obstacle.loud else obstacle.quiet_db
        loud_s, quiet_s = obstacle.sound_on_s
        obstacle.next_sound_event = now + self._rng.exponential(loud_s if obstacle.loud
                                                                else quiet_s)

    def _move_obstacle(self, obstacle: _Obstacle, now: float) -> None:
        if obstacle.next_sound_event <= now:
            self._toggle_sound(obstacle, now)
        if obstacle.next_stop_event <= now:  # a loose dog: sniff a while, then run on
            stopped = obstacle.speed == 0.0
            obstacle.speed = obstacle.cruise_speed if stopped else 0.0
            obstacle.next_stop_event = now + self._rng.exponential(5.0 if stopped else 2.5)
        amplitude, frequency, phase = obstacle.wander
        if obstacle.owner is not None:  # on a leash: follow the owner, nose about
            owner = obstacle.owner
            target_s = owner.s + obstacle.leash[0] + amplitude * math.sin(
                2 * math.pi * frequency * now + phase)
            target_y = owner.y + obstacle.leash[1] + 0.5 * amplitude * math.cos(
                2 * math.pi * frequency * 0.7 * now + phase)
            obstacle.speed = _clamp((target_s - obstacle.s) / 0.5 + owner.speed, -3.5, 3.5)
            obstacle.lateral_speed = _clamp((target_y - obstacle.y) / 0.5, -1.5, 1.5)
        else:
            relative = obstacle.s - self._s
            closing = (obstacle.speed - self._v) * math.copysign(1.0, -relative)
            gap = obstacle.y - self._y
            if obstacle.pass_lane is not None and relative - obstacle.half_length > 2.0:
                obstacle.home_y, obstacle.pass_lane = obstacle.pass_lane, None  # merge back
            if (not obstacle.dodged and closing > 0.1 and 0.0 < relative < 3.5
                    and abs(gap) < CORRIDOR_HALF_WIDTH + obstacle.half_width + 0.1):
                # Make way for the robot: step over to the nearer edge and stay there.
                side = math.copysign(1.0, gap) if abs(gap) > 0.05 else (
                    1.0 if obstacle.y < 0 else -1.0)
                obstacle.home_y = side * (SIDEWALK_HALF_WIDTH - obstacle.half_width - 0.15)
                obstacle.dodged = True
            wobble = amplitude * 2 * math.pi * frequency * math.cos(
                2 * math.pi * frequency * now + phase)
            obstacle.lateral_speed = _clamp((obstacle.home_y - obstacle.y) * 2.0,
                                            -obstacle.dodge_speed, obstacle.dodge_speed) + wobble
        obstacle.s += obstacle.speed * _DT
        limit = SIDEWALK_HALF_WIDTH - obstacle.half_width - 0.05
        obstacle.y = min(max(obstacle.y + obstacle.lateral_speed * _DT, -limit), limit)
        if obstacle.kind == BICYCLE and not obstacle.rang_bell:
            ahead = (obstacle.s - self._s) * math.copysign(1.0, -obstacle.speed)
            if 0.0 < ahead < 10.0:
                obstacle.rang_bell = True
                if self._rng.random() < 0.6:
                    obstacle.loud, obstacle.sound_db = True, obstacle.loud_db
                    obstacle.sound_on_s = (0.6, 1e9)
                    obstacle.next_sound_event = now + 0.6
        gone = abs(obstacle.s - self._s) > 45.0
        if gone or (obstacle.owner is not None and math.isnan(obstacle.owner.s)):
            obstacle.s = math.nan  # removed by _step_physics

    def _update_environment(self, now: float) -> None:
        rng = self._rng
        params = self._params
        # Traffic noise: an Ornstein-Uhlenbeck process in dB around the scenario's level.
        tau, sigma = 8.0, 2.5
        self._background_db += ((params['background_db'] - self._background_db) * _DT / tau
                                + sigma * math.sqrt(2 * _DT / tau) * self._normals.next())
        if now >= self._next_vehicle:
            self._vehicle_passes.append((now + 1.5, float(rng.uniform(4.0, 10.0))))
            self._next_vehicle = now + rng.exponential(60.0 / params['vehicles_per_min'])
        if self._vehicle_passes and self._vehicle_passes[0][0] < now - 6.0:
            self._vehicle_passes.pop(0)
        for name in self._outage_until:  # a USB hiccup, a loose connector
            if now >= self._next_outage[name]:
                self._outage_until[name] = now + rng.uniform(1.0, 3.0)
                self._next_outage[name] = now + rng.exponential(_OUTAGE_EVERY_S)

    def _observe_and_decide(self) -> None:
        """At the state of this step: the labels, and the speed and steering to apply next."""
        s, y = self._s, self._y
        labels = self._labels[self._step % _LABEL_HISTORY_STEPS]
        labels[:] = 0
        in_path: list[tuple[float, int]] = []
        labelled: list[_Obstacle] = []
        blocker: _Obstacle | None = None
        blocker_gap = math.inf
        speed_limit = self._cruise * _SURFACE_PHYSICS[self._surface_at(s)]['speed']
        for group in (self._static, self._moving):
            for obstacle in group:
                near = obstacle.s - obstacle.half_length - s
                if near > 6.0 or obstacle.s + obstacle.half_length <= s:
                    continue
                if abs(obstacle.y - y) >= CORRIDOR_HALF_WIDTH + obstacle.half_width:
                    continue
                if near <= PATH_LOOKAHEAD_M:
                    labels[obstacle.kind] = 1
                    in_path.append((near, obstacle.kind))
                    labelled.append(obstacle)
                if obstacle.kind == CURB:  # crawl over kerbs
                    speed_limit = min(speed_limit, 0.3 + 0.35 * max(near - 0.5, 0.0))
                    continue
                # Slow down towards it (more if it comes closer itself); stop when very close.
                closing = max(-obstacle.speed, 0.0)
                limit = 0.5 * (near - 1.0) - 0.3 * closing
                speed_limit = min(speed_limit, max(limit, 0.25) if near > 0.7 else 0.0)
                if near < blocker_gap:
                    blocker, blocker_gap = obstacle, near
        self._in_path = in_path
        self._target_speed = speed_limit

        # A wheeled robot moves sideways only by turning while it drives: at most ~30 degrees.
        lateral_limit = min(0.5, 0.6 * self._v + 0.05)
        self._target_lateral_v = _clamp((self._plan_line(s, y) - y) * 1.5, -lateral_limit,
                                        lateral_limit)

        # Boxed in for a while, or stuck behind something for long: the robot asks for help and
        # someone clears the way (or the walkers it follows turn into a shop).
        if blocker is not None and (blocker_gap < 1.0 and self._v < 0.05
                                    or blocker_gap < 4.0 and blocker.speed > 0.2):
            self._stopped_for += _DT
            if self._stopped_for > (8.0 if self._v < 0.05 else 20.0):
                if blocker in self._static:
                    self._static.remove(blocker)
                else:
                    self._moving.remove(blocker)
                    blocker.s = math.nan  # a dog on its leash leaves with it
                self._stopped_for = 0.0
                # Gone before this step's readings are taken: not in its labels either.
                if blocker in labelled:
                    labelled.remove(blocker)
                    labels[blocker.kind] = any(o.kind == blocker.kind for o in labelled)
                    self._in_path = [(o.s - o.half_length - s, o.kind) for o in labelled]
        else:
            self._stopped_for = 0.0

    def _plan_line(self, s: float, y: float) -> float:
        """The lateral line to drive: the middle if it is clear, else the nearest clear line.

        Obstacles count from :data:`_SWERVE_LOOKAHEAD_M` ahead until the robot's rear is past
        them; each rules out the robot lines within its half-width plus the corridor of it. The
        current line is kept while it stays clear, so the robot does not dither between gaps;
        with no clear line it keeps its line (and stops in front of the blocker).
        """
        clearance = CORRIDOR_HALF_WIDTH + 0.1
        blocked = []
        for group in (self._static, self._moving):
            for obstacle in group:
                if obstacle.kind == CURB:
                    continue
                if (obstacle.s - obstacle.half_length - s < _SWERVE_LOOKAHEAD_M
                        and obstacle.s + obstacle.half_length > s - ROBOT_LENGTH):
                    blocked.append((obstacle.y - obstacle.half_width - clearance,
                                    obstacle.y + obstacle.half_width + clearance))

        def clear(line: float) -> bool:
            return all(not low < line < high for low, high in blocked)

        if clear(0.0):
            line = 0.0
        elif clear(self._line):
            line = self._line
        else:
            room = SIDEWALK_HALF_WIDTH - ROBOT_HALF_WIDTH - 0.05
            options = [edge for low, high in blocked for edge in (low - 0.01, high + 0.01)
                       if abs(edge) <= room and clear(edge)]
            line = min(options, key=lambda option: abs(option - y)) if options else y
        self._line = line
        return line

    def _move_robot(self, now: float) -> None:
        """Integrate the robot over one step towards the targets decided at the previous one."""
        self._lateral_v += (self._target_lateral_v - self._lateral_v) * min(1.0, _DT / 0.3)
        accel = _clamp((self._target_speed - self._v) / 0.4, -1.2, 0.5)
        v_new = max(self._v + accel * _DT, 0.0)
        self._accel = (v_new - self._v) / _DT
        heading = math.atan2(self._lateral_v, max(v_new, 0.2))
        self._yaw_rate = (heading - self._yaw) / _DT
        self._yaw = heading
        s_new = self._s + v_new * _DT
        for obstacle in self._static:
            if obstacle.kind == CURB and self._s < obstacle.s <= s_new:
                self._jolt_time = now
        self._v = v_new
        self._s = s_new
        self._y += self._lateral_v * _DT

    # -- sensors ----------------------------------------------------------------------------------

    def _measure(self, name: str, stamp_ns: int) -> np.ndarray | None:
        now = stamp_ns / 1e9
        rng = self._sensor_rng[name]
        build = self._value_builders[name]
        if name == 'imu':
            return build(self._measure_imu(now, rng))
        if name == 'speed':
            slip = _SURFACE_PHYSICS[self.surface]['slip']
            return build(self._v * (1.0 + slip) + rng.normal(0.0, 0.015))
        if name == 'noise':
            level = self._sound_level(now, rng)
            return None if now < self._outage_until['noise'] else build(level)
        if name == 'lidar':
            ranges = self._measure_lidar(rng)
            return None if now < self._outage_until['lidar'] else build(ranges)
        return build(self._measure_sonar(name, rng))

    def _current_boxes(self) -> dict[str, np.ndarray]:
        """Robot-frame boxes of everything near, computed once per physics step."""
        if self._boxes_step == self._step:
            return self._boxes
        s, y = self._s, self._y
        now = self._step * _DT
        sonar, sonar_meta, lidar = [], [], []
        for group in (self._static, self._moving, self._scenery):
            for o in group:
                dx = o.s - s
                if dx + o.half_length < -1.0 or dx - o.half_length > LIDAR_RANGE_MAX + 1.0:
                    continue
                dy = o.y - y
                if dx - o.half_length < RANGE_MAX + 1.0:
                    sonar.append((dx - o.half_length, dx + o.half_length,
                                  dy - o.half_width, dy + o.half_width))
                    sonar_meta.append((o.echo, 1.0 if o.low else 0.0))
                if o.lidar_half_width is not None:
                    half_length = o.lidar_half_length
                    if o.gait[0] > 0.0 and abs(o.speed) > 0.2:  # legs swing apart and together
                        stride, cadence = o.gait
                        half_length += stride * abs(math.sin(math.pi * cadence * now
                                                             + o.wander[2]))
                    lidar.append((dx - half_length, dx + half_length,
                                  dy - o.lidar_half_width, dy + o.lidar_half_width))
        self._boxes = {'sonar': np.array(sonar, dtype=np.float64).reshape(-1, 4),
                       'sonar_meta': np.array(sonar_meta, dtype=np.float64).reshape(-1, 2),
                       'lidar': np.array(lidar, dtype=np.float64).reshape(-1, 4)}
        self._boxes_step = self._step
        return self._boxes

    def _sonar_echoes(self) -> dict[str, tuple[float, float]]:
        """Per sonar: distance to the nearest surface in its cone and that surface's echo strength.

        Traced once per physics step for all three sensors.
        """
        if self._echoes_step == self._step:
            return self._echoes
        boxes = self._current_boxes()
        self._echoes = {name: (math.inf, 0.0) for name in _SONAR_NAMES}
        if boxes['sonar'].shape[0]:
            distances = _ray_box_distances(_SONAR_ORIGIN_X, _SONAR_ORIGIN_Y, _SONAR_COS,
                                           _SONAR_SIN, boxes['sonar'])
            echo, low = boxes['sonar_meta'][:, 0], boxes['sonar_meta'][:, 1] > 0
            distances[:, low] = np.where(distances[:, low] > _LOW_OBSTACLE_VISIBLE_M, np.inf,
                                         distances[:, low])
            per_sensor = distances.reshape(len(_SONAR_NAMES), -1)  # (sensors, rays * boxes)
            nearest = np.argmin(per_sensor, axis=1)
            n_boxes = distances.shape[1]
            for index, name in enumerate(_SONAR_NAMES):
                flat = int(nearest[index])
                self._echoes[name] = (float(per_sensor[index, flat]),
                                      float(echo[flat % n_boxes]))
        self._echoes_step = self._step
        return self._echoes

    def _measure_sonar(self, name: str, rng: np.random.Generator) -> float:
        """One ultrasonic range (m), or +inf for no return."""
        distance, echo = self._sonar_echoes()[name]
        u = rng.random(3)
        if u[0] < 0.008:  # cross-talk: another sensor's ping arrives first
            return float(rng.uniform(0.15, 1.5))
        if u[1] < 0.02 or not math.isfinite(distance):  # dropout, or nothing within range
            return math.inf
        if u[2] > echo * (1.0 - 0.3 * (distance / RANGE_MAX) ** 2):  # echo too weak
            return math.inf
        measured = distance + rng.normal(0.0, 0.008 + 0.006 * distance)
        if measured > RANGE_MAX:
            return math.inf
        return max(measured, RANGE_MIN)

    def _measure_lidar(self, rng: np.random.Generator) -> np.ndarray:
        """(181,) float32 ranges over [-90, 90] degrees; +inf where nothing returns."""
        boxes = self._current_boxes()['lidar']
        if boxes.shape[0]:
            distances = _ray_box_distances(0.0, 0.0, _LIDAR_COS, _LIDAR_SIN, boxes).min(axis=1)
        else:
            distances = np.full(LIDAR_BEAMS, np.inf)
        noise = rng.normal(0.0, 0.015, LIDAR_BEAMS)
        dropped = rng.random(LIDAR_BEAMS) < 0.005
        measured = np.maximum(distances + noise, LIDAR_RANGE_MIN)
        measured[(measured > LIDAR_RANGE_MAX) | dropped] = np.inf
        return measured.astype(np.float32)

    def _measure_imu(self, now: float, rng: np.random.Generator) -> np.ndarray:
        """The 10 IMU fields (see ``_IMU_FIELDS``): vibration from surface and speed, plus motion.

        Vibration is an AR(1) process per axis (band-limited, heavier-tailed on gravel) scaled by
        the surface's gain and the speed, plus a bump per brick joint and a ring-down over kerbs.
        """
        physics = _SURFACE_PHYSICS[self.surface]
        amplitude = physics['gain'] * (0.2 + self._v) + 0.03
        ar = physics['ar']
        innovation = math.sqrt(1.0 - ar * ar)
        draws = rng.standard_normal(11).tolist()
        shocks = (rng.laplace(0.0, 1 / math.sqrt(2), 5).tolist() if physics['heavy_tail']
                  else draws[:5])
        state = self._imu_state
        for axis in range(5):
            state[axis] = ar * state[axis] + innovation * shocks[axis]
        vibration = [amplitude * value for value in state]
        if physics['joint_m'] is not None:
            self._brick_phase += (2 * math.pi * self._v / SENSOR_RATES_HZ['imu']
                                  / physics['joint_m'])
            vibration[2] += 0.8 * amplitude * math.sin(self._brick_phase)
        since_jolt = now - self._jolt_time
        jolt = 0.0
        if 0.0 <= since_jolt < 0.4:
            jolt = 7.0 * math.exp(-since_jolt / 0.06) * math.cos(2 * math.pi * 9.0 * since_jolt)
        noise = [0.02 * value for value in draws[5:]]
        half_yaw = 0.5 * self._yaw
        return np.array([
            self._accel + 0.35 * vibration[0] - 0.3 * jolt + noise[0],
            self._v * self._yaw_rate + 0.5 * vibration[1] + noise[1],
            _G + vibration[2] + jolt + noise[2],
            0.08 * vibration[3] + 0.1 * noise[3],
            0.08 * vibration[4] + 0.03 * jolt + 0.1 * noise[4],
            self._yaw_rate + 0.1 * noise[5],
            0.0, 0.0, math.sin(half_yaw), math.cos(half_yaw)], dtype=np.float64)

    def _sound_level(self, now: float, rng: np.random.Generator) -> float:
        """Sound pressure level at the robot (dB): every source summed in power."""
        power = 10.0 ** (self._background_db / 10.0)
        power += 10.0 ** ((38.0 + 5.0 * self._v) / 10.0)  # the robot's own motors
        for peak_time, peak_db in self._vehicle_passes:
            level = self._params['background_db'] + peak_db - 0.5 * ((now - peak_time) / 1.2) ** 2
            power += 10.0 ** (level / 10.0)
        for group in (self._moving, self._static):
            for o in group:
                if o.sound_db <= 0.0 and o.kind != CURB:
                    continue
                distance = max(math.hypot(o.s - self._s, o.y - self._y), 0.5)
                if distance > 60.0:
                    continue
                # A road crossing carries traffic noise: the kerb "sounds" like the road.
                source = o.sound_db if o.kind != CURB else self._background_db + 16.0
                power += 10.0 ** ((source - 20.0 * math.log10(distance)) / 10.0)
        return float(np.clip(10.0 * math.log10(power) + rng.normal(0.0, 0.7), 25.0, 125.0))


# ------------------------------------------------------------------------------------------------
# Data sets
# ------------------------------------------------------------------------------------------------

_CHUNK_NS = 1_000_000_000  # simulate a second at a time while replaying


def simulate_dataset(n_ticks: int, seed: int = 0, scenario: str = 'default',
                     config: FeatureConfig | None = None,
                     progress: bool = False) -> SimulatedDataset:
    """Simulate a run and compute features exactly as the node would, with labels at tick times.

    Every reading goes through :func:`~obstacle_classifier.features.prepare_values` (the +inf
    mapping and lidar sector reduction that :func:`~obstacle_classifier.features.extract_values`
    applies to messages) and :meth:`FeaturePipeline.add` (the node's validation), replayed with
    :func:`~obstacle_classifier.features.replay` at ``config.rate_hz``. Ticks start once the
    longest window is full; skipped ticks are dropped and counted.

    Args:
        n_ticks: rows wanted (>= 1); the run lasts about ``n_ticks / rate_hz`` seconds.
        seed, scenario: passed to :class:`SidewalkSimulator`.
        config: feature config (default: the default config).
        progress: show a tqdm progress bar.

    Returns:
        SimulatedDataset with X float64 (n_ticks, d), Y uint8 (n_ticks, c), stamps_ns int64.
    """
    n_ticks = operator.index(n_ticks)
    if n_ticks < 1:
        raise ValueError(f'n_ticks must be at least 1, got {n_ticks}')
    config = config if config is not None else load_default_config()
    simulator = SidewalkSimulator(seed=seed, scenario=scenario, config=config)
    pipeline = FeaturePipeline(config)
    specs = {spec.name: spec for spec in config.inputs}
    scan_geometry = {'angle_min': LIDAR_ANGLE_MIN, 'angle_increment': LIDAR_ANGLE_INCREMENT}

    def readings():
        while True:
            for reading in simulator.advance(simulator.now_ns + _CHUNK_NS):
                spec = specs[reading.input_name]
                geometry = scan_geometry if spec.sectors is not None else {}
                values = prepare_values(reading.values, spec, **geometry)
                yield reading.stamp_ns, reading.input_name, reading.stamp_ns, values

    period_ns = config.tick_period_ns
    longest_window = max(spec.window_ns for spec in config.inputs)
    first_tick_ns = max(-(-longest_window // period_ns), 1) * period_ns
    X = np.empty((n_ticks, len(config.feature_names)), dtype=np.float64)
    Y = np.empty((n_ticks, len(CLASS_NAMES)), dtype=np.uint8)
    stamps = np.empty(n_ticks, dtype=np.int64)
    rows = skipped = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n_ticks, unit='tick', desc=f'simulating ({scenario}, seed {seed})')
    try:
        for result in replay(pipeline, readings(), first_tick_ns=first_tick_ns):
            if result.skipped:
                skipped += 1
                if skipped > max(1000, n_ticks):
                    raise RuntimeError(f'{skipped} ticks skipped (stale: '
                                       f'{", ".join(result.stale_inputs)}): check the config')
                continue
            X[rows] = result.features
            Y[rows] = simulator.labels_at(result.stamp_ns)
            stamps[rows] = result.stamp_ns
            rows += 1
            if bar is not None:
                bar.update(1)
            if rows == n_ticks:
                break
    finally:
        if bar is not None:
            bar.close()
    return SimulatedDataset(X=X, Y=Y, feature_names=config.feature_names,
                            class_names=CLASS_NAMES, stamps_ns=stamps, skipped_ticks=skipped)
