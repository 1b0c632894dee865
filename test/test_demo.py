"""``make demo`` end to end, shortened with ``--duration``: two real node processes, the live
lines, the summary, and no process left behind however the demo ends."""
from __future__ import annotations

import os
import re
import signal

import pytest

import ros_helpers

DEMO = 'obstacle_classifier.demo'
TIMEOUT = 180.0  # s: a first run trains the fallback model (a few seconds) before starting
STRICT_WARNINGS = ros_helpers.STRICT_WARNINGS_ENV


def _children(proc) -> dict:
    match = proc.wait_for_output(
        r'started sidewalk_simulator \(pid (\d+)\) and classifier_node \(pid (\d+)\)',
        timeout=TIMEOUT)
    return {'sidewalk_simulator': int(match.group(1)), 'classifier_node': int(match.group(2))}


def _alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat', 'rb') as stat:
            return stat.read().rsplit(b')', 1)[1].split()[0] not in (b'Z', b'X')
    except OSError:
        return False


def test_demo_runs_both_nodes_shows_live_detections_and_summarises(ros_processes, ros_env):
    proc = ros_processes.start_module('demo', DEMO, ['--duration', '5'],
                                      extra_env=STRICT_WARNINGS)
    children = _children(proc)
    assert proc.wait(TIMEOUT) == 0, proc.report()
    out = proc.stdout()
    assert f'ROS_DOMAIN_ID {ros_env["ROS_DOMAIN_ID"]}' in out
    assert re.search(r'model: .*\.npz', out), out
    live = re.findall(r'^\s*\d+\.\d+s\s', out, re.MULTILINE)
    assert len(live) >= 8, out  # two lines a second for 5 s
    ticks = re.search(r'ticks received\s+(\d+) over ([\d.]+) s: ([\d.]+) Hz', out)
    assert ticks and int(ticks.group(1)) >= 80 and abs(float(ticks.group(3)) - 20.0) <= 2.0, out
    assert re.search(r'latency\s+receipt - stamp: p50 [\d.]+ ms, p99 [\d.]+ ms', out), out
    assert re.search(r'micro F1\s+([\d.]+|-)\s', out), out
    assert 'stopped: sidewalk_simulator exited 0, classifier_node exited 0' in out, out
    assert not any(_alive(pid) for pid in children.values())
    assert 'Traceback' not in out + proc.stderr()


@pytest.mark.parametrize('how', ['sigterm_to_the_demo', 'ctrl_c_in_the_terminal'])
def test_demo_stopped_early_still_summarises_and_stops_its_nodes_cleanly(ros_processes, how):
    proc = ros_processes.start_module('demo', DEMO, ['--duration', '60'],
                                      extra_env=STRICT_WARNINGS)
    children = _children(proc)
    proc.wait_for_output(r'^\s*1\.\d+s\s', timeout=TIMEOUT)
    if how == 'sigterm_to_the_demo':
        # The demo alone (not its process group): it must stop the nodes itself.
        os.kill(proc.pid, signal.SIGTERM)
    else:
        # A terminal's Ctrl-C goes to the whole process group: the nodes get it too. A second
        # SIGINT from the demo on its heels would cut their clean shutdown short.
        os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(60) == 0, proc.report()
    out = proc.stdout()
    assert 'interrupted' in out and 'ticks received' in out, out
    assert 'stopped: sidewalk_simulator exited 0, classifier_node exited 0' in out, out
    assert not any(_alive(pid) for pid in children.values())
