"""Tests of the simulated sidewalk: determinism, sensor realism, labels, and the data set path."""
from __future__ import annotations

import math

import numpy as np
import pytest

from obstacle_classifier.features import (FeatureConfig, FeaturePipeline, load_default_config,
                                          prepare_values)
from obstacle_classifier.simulation import (CLASS_NAMES, CORRIDOR_HALF_WIDTH, DT_NS,
                                            LIDAR_ANGLE_INCREMENT, LIDAR_ANGLE_MIN, LIDAR_BEAMS,
                                            LIDAR_RANGE_MAX, LIDAR_RANGE_MIN, PATH_LOOKAHEAD_M,
                                            RANGE_MAX, RANGE_MIN, SCENARIOS, SENSOR_RATES_HZ,
                                            SURFACES, SidewalkSimulator, simulate_dataset)

S = 1_000_000_000


@pytest.fixture(scope='module')
def long_run():
    """20000 ticks (about 17 minutes of driving) through the whole path, shared by tests."""
    return simulate_dataset(20_000, seed=0)


@pytest.fixture(scope='module')
def two_minutes():
    simulator = SidewalkSimulator(seed=11)
    return simulator, simulator.advance(120 * S)


def by_sensor(readings):
    grouped = {}
    for reading in readings:
        grouped.setdefault(reading.input_name, []).append(reading)
    return grouped


def test_public_lists():
    assert CLASS_NAMES == ('pedestrian', 'bicycle', 'trash_can', 'pole', 'dog', 'scooter',
                           'barrier', 'curb')
    assert SCENARIOS == ('default', 'quiet', 'busy')
    assert set(SURFACES) == {'asphalt', 'brick', 'gravel', 'grass'}
    assert SidewalkSimulator().class_names == CLASS_NAMES
    with pytest.raises(ValueError, match='unknown scenario'):
        SidewalkSimulator(scenario='rainy')


def test_same_seed_gives_identical_readings_however_advanced():
    whole_sim = SidewalkSimulator(seed=3)
    whole = whole_sim.advance(30 * S)
    chunked_sim = SidewalkSimulator(seed=3)
    chunked = []
    rng = np.random.default_rng(0)
    while chunked_sim.now_ns < 30 * S:
        until = min(chunked_sim.now_ns + int(rng.integers(1, 2 * S)), 30 * S)
        chunked += chunked_sim.advance(until)
    assert len(whole) == len(chunked) > 1000
    for a, b in zip(whole, chunked):
        assert (a.input_name, a.stamp_ns) == (b.input_name, b.stamp_ns)
        assert a.values.dtype == b.values.dtype and a.values.tobytes() == b.values.tobytes()
    for t in range(21 * S, 30 * S, S // 3):
        np.testing.assert_array_equal(whole_sim.labels_at(t), chunked_sim.labels_at(t))


def test_different_seeds_differ():
    a = SidewalkSimulator(seed=1).advance(5 * S)
    b = SidewalkSimulator(seed=2).advance(5 * S)
    assert [r.stamp_ns for r in a] != [r.stamp_ns for r in b]
    speeds = [np.concatenate([r.values for r in readings if r.input_name == 'speed'])
              for readings in (a, b)]
    assert speeds[0].tobytes() != speeds[1].tobytes()


def test_readings_are_in_the_interval_and_in_time_order():
    simulator = SidewalkSimulator(seed=4)
    simulator.advance(2 * S)
    readings = simulator.advance(5 * S)
    stamps = [r.stamp_ns for r in readings]
    assert all(2 * S < stamp <= 5 * S for stamp in stamps)
    assert stamps == sorted(stamps)
    assert simulator.now_ns == 5 * S
    with pytest.raises(ValueError, match='back in time'):
        simulator.advance(4 * S)


def test_each_sensor_keeps_its_rate(two_minutes):
    _, readings = two_minutes
    for name, group in by_sensor(readings).items():
        stamps = np.array([r.stamp_ns for r in group])
        assert np.all(np.diff(stamps) > 0), name
        period = np.median(np.diff(stamps)) / S
        assert period == pytest.approx(1 / SENSOR_RATES_HZ[name], rel=0.1), name
        # Counting: within 10 % even with the microphone's and the lidar's rare outages.
        assert len(group) == pytest.approx(120 * SENSOR_RATES_HZ[name], rel=0.1), name
    assert set(by_sensor(readings)) == set(SENSOR_RATES_HZ)


def test_values_are_shaped_as_the_messages_carry_them(two_minutes):
    _, readings = two_minutes
    first = {name: group[0].values for name, group in by_sensor(readings).items()}
    expected = {'range_front': (np.float32, (1,)), 'range_left': (np.float32, (1,)),
                'range_right': (np.float32, (1,)), 'imu': (np.float64, (4,)),
                'speed': (np.float64, (1,)), 'noise': (np.float32, (1,)),
                'lidar': (np.float32, (LIDAR_BEAMS,))}
    for name, (dtype, shape) in expected.items():
        assert first[name].dtype == dtype and first[name].shape == shape, name


def test_ranges_respect_max_range_and_drop_out(two_minutes):
    _, readings = two_minutes
    grouped = by_sensor(readings)
    for name in ('range_front', 'range_left', 'range_right'):
        values = np.concatenate([r.values for r in grouped[name]]).astype(np.float64)
        finite = values[np.isfinite(values)]
        assert np.all(values[~np.isfinite(values)] == np.inf)        # no NaN, no -inf
        assert finite.min() >= np.float32(RANGE_MIN) and finite.max() <= RANGE_MAX
        no_return = np.mean(values == np.inf)
        assert 0.02 < no_return < 0.98, (name, no_return)             # dropouts, not dead
        assert np.mean(finite < 1.5) > 0.01, name                     # things come close
    scans = np.stack([r.values for r in grouped['lidar']]).astype(np.float64)
    finite = scans[np.isfinite(scans)]
    assert finite.min() >= np.float32(LIDAR_RANGE_MIN) and finite.max() <= LIDAR_RANGE_MAX
    assert np.all(scans[~np.isfinite(scans)] == np.inf)
    assert 0.0 < np.mean(np.isinf(scans)) < 1.0


def test_every_reading_passes_the_node_validation(two_minutes):
    _, readings = two_minutes
    config = load_default_config()
    pipeline = FeaturePipeline(config)
    geometry = {'angle_min': LIDAR_ANGLE_MIN, 'angle_increment': LIDAR_ANGLE_INCREMENT}
    for reading in readings:
        spec = config.input(reading.input_name)
        values = prepare_values(reading.values, spec,
                                **(geometry if spec.sectors is not None else {}))
        assert pipeline.add(reading.input_name, reading.stamp_ns, values) is None
    assert all(stats.accepted > 0 for stats in pipeline.stats().values())


def test_surfaces_change_and_set_the_vibration():
    simulator = SidewalkSimulator(seed=0)
    vibration = {}
    for k in range(1, 601):   # 5 minutes in half-second steps (seed 0 meets all four surfaces)
        z = [r.values[2] for r in simulator.advance(k * S // 2) if r.input_name == 'imu']
        if simulator.robot_speed > 0.6:   # compare at cruising speeds only
            vibration.setdefault(simulator.surface, []).append(np.std(z))
    assert set(vibration) == set(SURFACES)
    median = {surface: float(np.median(values)) for surface, values in vibration.items()}
    assert median['asphalt'] < min(median['brick'], median['grass']) < median['gravel']
    assert median['gravel'] > 2.5 * median['asphalt']


def test_labels_and_obstacles_in_path_agree():
    simulator = SidewalkSimulator(seed=5)
    seen_any = False
    for k in range(1, 121):
        simulator.advance(k * S)
        labels = simulator.labels_at(simulator.now_ns)
        assert labels.dtype == np.uint8 and labels.shape == (len(CLASS_NAMES),)
        in_path = simulator.obstacles_in_path()
        assert set(in_path) == {CLASS_NAMES[i] for i in np.flatnonzero(labels)}
        seen_any |= bool(in_path)
    assert seen_any
    simulator.labels_at(simulator.now_ns - 9 * S)   # a little history is kept
    with pytest.raises(ValueError, match='only the last'):
        simulator.labels_at(simulator.now_ns - 11 * S)
    with pytest.raises(ValueError):
        simulator.labels_at(simulator.now_ns + S)


def test_labels_follow_the_world_the_sensors_of_the_step_see():
    # The ground-truth rule applied to the world after every physics step, removals included
    # (the robot stuck behind an obstacle has it cleared away: at step 10947 of seed 0 a trash
    # can whose removal must not outlive itself in the labels). White-box: the rule reads the
    # simulator's world.
    simulator = SidewalkSimulator(seed=0)
    removals = 0
    for _ in range(11_000):
        count = len(simulator._static) + len(simulator._moving)
        simulator._step_physics()
        removals += count > len(simulator._static) + len(simulator._moving)
        expected = np.zeros(len(CLASS_NAMES), np.uint8)
        for obstacle in simulator._static + simulator._moving:
            near = obstacle.s - obstacle.half_length - simulator._s
            if (near <= PATH_LOOKAHEAD_M and obstacle.s + obstacle.half_length > simulator._s
                    and abs(obstacle.y - simulator._y)
                    < CORRIDOR_HALF_WIDTH + obstacle.half_width):
                expected[obstacle.kind] = 1
        stored = simulator.labels_at(simulator._step * DT_NS)
        assert np.array_equal(stored, expected), (simulator._step, stored, expected)
    assert removals >= 1


def test_long_run_labels_are_multi_hot_and_balanced(long_run):
    Y = long_run.Y
    assert Y.dtype == np.uint8 and set(np.unique(Y)) <= {0, 1}
    rates = long_run.positive_rates()
    print('\npositive rate per class over 20000 ticks:',
          ', '.join(f'{name} {rate:.1%}' for name, rate in rates.items()))
    for name, rate in rates.items():
        assert 0.02 < rate < 0.9, f'{name}: {rate:.1%} positive ({rates})'
    co_occurring = Y.sum(axis=1) >= 2
    assert co_occurring.mean() > 0.02
    assert len({tuple(row) for row in Y[co_occurring]}) > 5   # several different combinations
    assert 0.05 < np.mean(Y.sum(axis=1) == 0) < 0.95          # and clear sidewalk too


def test_dataset_shapes_dtypes_and_values(long_run):
    config = load_default_config()
    assert long_run.X.shape == (20_000, len(config.feature_names))
    assert long_run.X.dtype == np.float64
    assert long_run.Y.shape == (20_000, len(CLASS_NAMES))
    assert long_run.stamps_ns.dtype == np.int64
    assert long_run.feature_names == config.feature_names
    assert long_run.class_names == CLASS_NAMES
    assert np.isfinite(long_run.X).all()
    assert np.all(np.diff(long_run.stamps_ns) % config.tick_period_ns == 0)
    assert np.all(np.diff(long_run.stamps_ns) > 0)
    assert long_run.skipped_ticks == 0
    # The lidar and the microphone drop out now and then: filled and flagged, never skipped.
    for flag in ('lidar.stale', 'noise.stale'):
        column = long_run.X[:, config.feature_names.index(flag)]
        assert set(np.unique(column)) == {0.0, 1.0}
        assert 0 < column.mean() < 0.1


def test_dataset_is_reproducible_and_seeded():
    a = simulate_dataset(200, seed=5)
    b = simulate_dataset(200, seed=5)
    c = simulate_dataset(200, seed=6)
    assert a.X.tobytes() == b.X.tobytes() and a.Y.tobytes() == b.Y.tobytes()
    assert a.stamps_ns.tobytes() == b.stamps_ns.tobytes()
    assert a.X.tobytes() != c.X.tobytes()
    with pytest.raises(ValueError):
        simulate_dataset(0)


def test_scenarios_change_the_world():
    def mean_noise(scenario):
        readings = SidewalkSimulator(seed=2, scenario=scenario).advance(60 * S)
        return np.mean([r.values[0] for r in readings if r.input_name == 'noise'])
    assert mean_noise('quiet') < mean_noise('default') < mean_noise('busy')


def config_with(**imu_overrides) -> FeatureConfig:
    data = {'rate_hz': 10, 'inputs': [
        {'name': 'imu', 'topic': 'sensors/imu', 'msg_type': 'sensor_msgs/msg/Imu',
         'fields': ['linear_acceleration.z', 'orientation.w'], 'dim': 2,
         'valid_range': [-50, 50], 'timeout_s': 0.1, 'window_s': 0.5,
         'aggregations': ['mean'], 'policy': 'skip', **imu_overrides},
        {'name': 'range_front', 'topic': 'sensors/range/front',
         'msg_type': 'sensor_msgs/msg/Range', 'fields': ['range', 'max_range'], 'dim': 2,
         'valid_range': [0.0, 4.0], 'posinf_value': 4.0, 'timeout_s': 0.2, 'window_s': 0.5,
         'aggregations': ['min'], 'policy': 'skip'},
    ]}
    return FeatureConfig.from_dict(data)


def test_a_custom_config_selects_sensors_and_fields():
    readings = SidewalkSimulator(seed=1, config=config_with()).advance(10 * S)
    grouped = by_sensor(readings)
    assert set(grouped) == {'imu', 'range_front'}
    imu = np.stack([r.values for r in grouped['imu']])
    assert imu.shape[1] == 2
    assert abs(imu[:, 0].mean() - 9.81) < 0.2         # gravity on z
    assert np.all((imu[:, 1] > 0.9) & (imu[:, 1] <= 1.0))   # w of a near-zero yaw
    ranges = np.stack([r.values for r in grouped['range_front']])
    assert np.all(ranges[:, 1] == RANGE_MAX)
    dataset = simulate_dataset(50, seed=1, config=config_with())
    assert dataset.X.shape == (50, 4)


@pytest.mark.parametrize('change, message', [
    ({'name': 'sonar_top'}, 'no sensor'),
    ({'msg_type': 'std_msgs/msg/Float64', 'fields': ['data'], 'dim': 1,
      'stamp_source': 'receive'}, 'publishes sensor_msgs/msg/Imu'),
])
def test_configs_the_simulator_cannot_serve_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        SidewalkSimulator(config=config_with(**change))


def test_progress_bar(capsys):
    simulate_dataset(20, seed=0, progress=True)
    assert 'simulating' in capsys.readouterr().err


def test_simulated_speed_and_noise_are_plausible(two_minutes):
    _, readings = two_minutes
    grouped = by_sensor(readings)
    speed = np.array([r.values[0] for r in grouped['speed']])
    assert 0.3 < speed.mean() < 1.8 and speed.max() < 2.5
    noise = np.array([r.values[0] for r in grouped['noise']], dtype=np.float64)
    assert 35 < noise.mean() < 80 and not math.isnan(noise.std())
