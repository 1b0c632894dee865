"""SimTimeTicker: ticks and readings in the bag player's order, whatever order they arrive in."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from obstacle_classifier.features import (FeaturePipeline, load_default_config, prepare_values,
                                          replay)
from obstacle_classifier.sim_ticks import Event, SimTimeTicker
from obstacle_classifier.simulation import (LIDAR_ANGLE_INCREMENT, LIDAR_ANGLE_MIN,
                                            SidewalkSimulator)

MS = 1_000_000
PERIOD = 50 * MS


def run(ticker: SimTimeTicker, arrivals: list[tuple], steady: int = 0) -> list[tuple]:
    """Feed ('clock', source, value) / ('msg', source, name, needs_bag_time) arrivals; the
    events as ('tick', t) / ('msg', name, bag_ns)."""
    out = []
    for arrival in arrivals:
        if arrival[0] == 'clock':
            events, _ = ticker.on_clock(arrival[1], arrival[2], steady)
        else:
            events = ticker.on_message(arrival[1], arrival[2], steady, arrival[3])
        out.extend(describe(events))
    return out


def describe(events: list[Event]) -> list[tuple]:
    return [('tick', e.tick_ns) if e.payload is None else ('msg', e.payload, e.bag_ns)
            for e in events]


def test_ticks_follow_the_absolute_grid_once_clock_passes_them():
    ticker = SimTimeTicker(PERIOD)
    out = run(ticker, [('clock', 1, 1020 * MS), ('clock', 2, 1050 * MS),
                       ('clock', 3, 1051 * MS), ('msg', 4, 'a', False)])
    # The grid starts at 1050 ms (first grid point >= 1020 ms); /clock == 1050 ms is not past
    # it; 1051 ms is. Nothing runs before a /clock published after it has arrived (what was
    # published before it may still be on its way)...
    assert out == []
    # ...then the tick runs before the reading published after its /clock.
    assert run(ticker, [('clock', 5, 1052 * MS)]) == [('tick', 1050 * MS), ('msg', 'a', None)]


def test_a_reading_published_before_the_clock_runs_before_its_tick_even_if_it_arrives_later():
    ticker = SimTimeTicker(PERIOD)
    run(ticker, [('clock', 1, 1010 * MS)])                # the grid starts at 1050 ms
    out = run(ticker, [('clock', 3, 1060 * MS),          # triggers tick 1050 ms
                       ('msg', 2, 'late', False),         # published before that /clock
                       ('msg', 4, 'next', False),
                       ('clock', 5, 1061 * MS)])
    assert out == [('msg', 'late', None), ('tick', 1050 * MS), ('msg', 'next', None)]


def test_a_receive_stamped_reading_waits_for_a_later_clock_and_takes_the_one_before_it():
    ticker = SimTimeTicker(PERIOD)
    # The player sends /clock 1010 ms (source 10) and then the reading (source 11); the
    # reading arrives first. It must not be stamped with the older 1005 ms.
    out = run(ticker, [('clock', 5, 1005 * MS), ('msg', 11, 'speed', True)])
    assert out == []
    assert ticker.waiting == 1
    out = run(ticker, [('clock', 10, 1010 * MS)])
    assert out == []  # still no /clock published after the reading
    out = run(ticker, [('clock', 12, 1012 * MS)])
    assert out == [('msg', 'speed', 1010 * MS)]


def test_readings_published_after_a_waiting_one_wait_behind_it():
    ticker = SimTimeTicker(PERIOD)
    out = run(ticker, [('clock', 1, 1010 * MS), ('clock', 3, 1049 * MS),
                       ('msg', 4, 'speed', True), ('msg', 5, 'range', False)])
    assert out == []
    out = run(ticker, [('clock', 6, 1051 * MS), ('msg', 7, 'imu', False)])
    assert out == [('msg', 'speed', 1049 * MS), ('msg', 'range', None)]
    out = run(ticker, [('clock', 8, 1052 * MS)])
    assert out == [('tick', 1050 * MS), ('msg', 'imu', None)]


def test_overdue_releases_in_order_what_nothing_followed():
    ticker = SimTimeTicker(PERIOD)
    run(ticker, [('clock', 1, 1000 * MS)], steady=0)
    run(ticker, [('clock', 2, 1101 * MS)], steady=10 * MS)  # ticks 1000, 1050, 1100 wait
    assert ticker.waiting == 3
    assert describe(ticker.overdue(15 * MS, 10 * MS)) == []
    assert describe(ticker.overdue(20 * MS, 10 * MS)) == [
        ('tick', 1000 * MS), ('tick', 1050 * MS), ('tick', 1100 * MS)]
    run(ticker, [('msg', 3, 'speed', True)], steady=30 * MS)  # no /clock after it comes
    assert describe(ticker.overdue(35 * MS, 10 * MS)) == []
    assert describe(ticker.overdue(40 * MS, 10 * MS)) == [('msg', 'speed', 1101 * MS)]
    assert ticker.waiting == 0


def test_a_jump_back_drops_the_queue_and_restarts_the_grid():
    ticker = SimTimeTicker(PERIOD)
    run(ticker, [('clock', 1, 1000 * MS), ('clock', 2, 1060 * MS)])
    events, jumped = ticker.on_clock(3, 500 * MS, 0)
    assert jumped and ticker.events_dropped == 2 and describe(events) == []  # 1000, 1050
    assert run(ticker, [('clock', 4, 551 * MS), ('msg', 5, 'a', False),
                        ('clock', 6, 552 * MS)]) == [
        ('tick', 500 * MS), ('tick', 550 * MS), ('msg', 'a', None)]


def test_a_reading_from_before_a_jump_back_that_arrives_after_it_is_dropped():
    # The last reading of a bag loop overtaken by the next loop's first /clock: it would enter
    # the freshly cleared buffers with a stamp newer than all of the new loop.
    ticker = SimTimeTicker(PERIOD)
    run(ticker, [('clock', 1, 1000 * MS), ('clock', 2, 1999 * MS)])
    dropped = ticker.events_dropped
    out = run(ticker, [('clock', 4, 1000 * MS), ('msg', 3, 'old loop', False),
                       ('msg', 5, 'new loop', False), ('clock', 6, 1001 * MS)])
    assert out == [('msg', 'new loop', None)]
    assert ticker.events_dropped - dropped == 1 + 20  # the reading; ticks 1000 ... 1950
    # Overtaken by two publications (the jump and the next /clock): still dropped.
    assert run(ticker, [('msg', 3, 'old loop, later still', False)]) == []
    assert ticker.events_dropped - dropped == 2 + 20
    # Two /clock messages after the jump the guard is off: a publisher whose clock lags
    # (stamping its readings "before" the jump) is not silenced for as long as it lags.
    out = run(ticker, [('clock', 7, 1002 * MS), ('msg', 2, 'lagging clock', False),
                       ('clock', 8, 1003 * MS)])
    assert ('msg', 'lagging clock', None) in out


def test_a_period_change_releases_what_waits_and_restarts_the_grid():
    ticker = SimTimeTicker(PERIOD)
    run(ticker, [('clock', 1, 1000 * MS), ('clock', 2, 1051 * MS), ('msg', 3, 'a', False)])
    assert ticker.waiting == 3  # ticks 1000 and 1050, then the reading: no later /clock yet
    released = describe(ticker.change_period(20 * MS))
    assert released == [('tick', 1000 * MS), ('tick', 1050 * MS), ('msg', 'a', None)]
    assert ticker.waiting == 0
    # The new grid: every 20 ms from the first grid point at or after the next /clock.
    out = run(ticker, [('clock', 4, 1065 * MS), ('clock', 5, 1101 * MS),
                       ('clock', 6, 1102 * MS)])
    assert out == [('tick', 1080 * MS), ('tick', 1100 * MS)]
    with pytest.raises(ValueError, match='period_ns'):
        ticker.change_period(0)


def test_a_long_jump_forward_runs_the_first_ticks_and_drops_the_rest():
    # The ticks just after the last /clock see the readings from before the gap, as bag
    # extraction does; the later ones would all be stale.
    ticker = SimTimeTicker(PERIOD, max_jump_ticks=3)
    run(ticker, [('clock', 1, 0)])
    out = run(ticker, [('clock', 2, 10 * PERIOD + 1), ('msg', 3, 'a', False),
                       ('clock', 4, 10 * PERIOD + 2)])
    assert out == [('tick', 0), ('tick', PERIOD), ('tick', 2 * PERIOD), ('msg', 'a', None)]
    assert ticker.ticks_dropped == 8
    # The grid goes on after the clock: the next tick is the first grid point past it.
    assert run(ticker, [('clock', 5, 11 * PERIOD + 1), ('clock', 6, 11 * PERIOD + 2)]) == [
        ('tick', 11 * PERIOD)]


def test_a_reading_of_the_new_loop_that_overtook_the_jump_stays():
    # bag play --loop publishes the jump's /clock, then the new loop's first reading; the
    # reading may arrive first. It belongs to the new loop and must not be cleared with it.
    ticker = SimTimeTicker(PERIOD)
    run(ticker, [('clock', 1, 1000 * MS), ('clock', 2, 1999 * MS)])
    out = run(ticker, [('msg', 4, 'first of the new loop', False), ('clock', 3, 1000 * MS),
                       ('clock', 5, 1001 * MS)])
    assert out == [('msg', 'first of the new loop', None)]


def test_period_must_be_positive():
    with pytest.raises(ValueError, match='period_ns'):
        SimTimeTicker(0)


def test_shuffled_arrivals_give_replay_features_bit_for_bit():
    """A simulated stream, published the bag player's way, arriving with the topics shuffled
    against each other (each topic in its own order): the ticker's events fed to a pipeline
    give replay()'s features exactly."""
    config = load_default_config()
    specs = {spec.name: spec for spec in config.inputs}
    geometry = {'angle_min': LIDAR_ANGLE_MIN, 'angle_increment': LIDAR_ANGLE_INCREMENT}
    rng = np.random.default_rng(0)
    readings = []  # (bag receive time = header stamp + a latency, name, header stamp, values)
    for reading in SidewalkSimulator(seed=3, config=config).advance(3_000 * MS):
        spec = specs[reading.input_name]
        values = prepare_values(reading.values, spec,
                                **(geometry if spec.sectors is not None else {}))
        readings.append((reading.stamp_ns + int(rng.integers(0, 3 * MS)), reading.input_name,
                         reading.stamp_ns, values))
    readings.sort(key=lambda r: r[0])
    receive_stamped = {spec.name for spec in config.inputs if spec.stamp_source == 'receive'}

    # Offline, as bag extraction does: receive-stamped readings get strictly increasing stamps.
    offline_pipeline = FeaturePipeline(config)
    last = dict.fromkeys(receive_stamped, -1)
    offline_readings = []
    for receive_ns, name, stamp_ns, values in readings:
        if name in receive_stamped:
            stamp_ns = last[name] = max(receive_ns, last[name] + 1)
        offline_readings.append((receive_ns, name, stamp_ns, values))
    first = -(-readings[0][0] // PERIOD) * PERIOD
    offline = {result.stamp_ns: result.features
               for result in replay(offline_pipeline, offline_readings, first_tick_ns=first)}

    # The player: /clock then the message, sources increasing; per-topic streams.
    streams: dict[str, list[tuple]] = {'/clock': []}
    source = itertools.count(1)
    for index, (receive_ns, name, stamp_ns, values) in enumerate(readings):
        streams['/clock'].append(('clock', next(source), receive_ns))
        streams.setdefault(name, []).append(('msg', next(source), index, name in receive_stamped))
    # Each topic arrives in its own order; any arrival may come after the next two
    # publications (other topics'), as /clock and sensor messages published back to back can
    # over DDS. (Three or more breaks exactness: the node test measures the real thing.)
    arrivals = []
    for stream in streams.values():
        delays = np.maximum.accumulate([a[1] + rng.integers(0, 3) for a in stream])
        arrivals.extend(zip(delays.tolist(), stream))
    arrivals = [arrival for _, arrival in sorted(arrivals, key=lambda pair: pair[0])]
    swapped = sum(a[1] > b[1] for a, b in zip(arrivals, arrivals[1:]))
    assert swapped > 100  # the order really is disturbed

    ticker = SimTimeTicker(PERIOD)
    live_pipeline = FeaturePipeline(config)
    last = dict.fromkeys(receive_stamped, -1)
    live = {}

    def apply(events: list[Event]) -> None:
        for event in events:
            if event.payload is None:
                live[event.tick_ns] = live_pipeline.tick(event.tick_ns).features
                continue
            _, name, stamp_ns, values = readings[event.payload]
            if name in receive_stamped:
                stamp_ns = last[name] = max(event.bag_ns, last[name] + 1)
            live_pipeline.add(name, stamp_ns, values)

    for arrival in arrivals:
        if arrival[0] == 'clock':
            apply(ticker.on_clock(arrival[1], arrival[2], 0)[0])
        else:
            apply(ticker.on_message(arrival[1], arrival[2], 0, arrival[3]))
    apply(ticker.overdue(1, 0))

    common = [t for t in offline if t in live]
    assert len(common) >= len(offline) - 1
    for t in common:
        if offline[t] is None:
            assert live[t] is None
        else:
            assert live[t] is not None and live[t].tobytes() == offline[t].tobytes(), t
