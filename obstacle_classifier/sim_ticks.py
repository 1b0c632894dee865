"""Ticking on sim time in the order the bag player sent things (no ROS imports).

With ``use_sim_time`` a node's timer fires when ``/clock`` reaches the tick time, but ``/clock``
and each sensor topic are separate DDS streams: they arrive in no guaranteed order relative to
each other, and the executor serves ready subscriptions in creation order, not arrival order.
So a timer-driven tick can run before a reading that was published ahead of the ``/clock``
message that triggered it, and a receive-stamped reading can be stamped with a ``/clock`` value
older or newer than its own. Both make the live features differ from the ones
:func:`~obstacle_classifier.features.replay` computes from the same bag.

:class:`SimTimeTicker` restores the publisher's order from DDS source timestamps (one player
process, one clock). ``bag play`` publishes, for every bag message at bag time T, ``/clock`` = T
and then the message, and between messages only ``/clock`` values up to the next message's time.
Hence:

* tick t is triggered by the first ``/clock`` value > t (every reading received at or before t
  was published before it) and must run after everything published before that ``/clock``
  message and before anything published after it: exactly ``replay``'s interleaving;
* a receive-stamped reading's bag time is the value of the last ``/clock`` published before it.

Ticks and readings wait in one queue ordered by source timestamp and run once a ``/clock``
published after them has arrived: one topic keeps its order, so every earlier ``/clock`` is in,
and a reading that was overtaken has had that long to arrive and take its place. The player
publishes ``/clock`` before every message, so the wait is one message of the bag (at most one
``clock_rate_hz`` period). Exact as long as no message is overtaken by more than two
publications (a simulated shuffle tests this; the node test plays a real bag into the node).

Whatever waits longer than ``max_wait_ns`` on the steady clock (the end of a bag, a silent
``/clock``) is released by :meth:`SimTimeTicker.overdue`, receive-stamped readings with the last
``/clock`` known before them. With publishers other than ``bag play`` the same rules order
things by their (shared-machine) wall clocks: sensible, but exact only for ``bag play``.
"""
from __future__ import annotations

import bisect
import collections
from typing import Any, NamedTuple, Optional

__all__ = ['Event', 'SimTimeTicker']

#: /clock messages remembered to map a reading's source timestamp to bag time; readings are
#: released within a few /clock messages of their own, so a short history is plenty.
CLOCK_HISTORY = 256
#: After a jump back, readings published before it are dropped until this many more /clock
#: messages have arrived: long enough for any reading overtaken by up to two publications,
#: short enough that a publisher whose clock lags (not bag play) loses only that much.
JUMP_GUARD_CLOCKS = 2


class Event(NamedTuple):
    """What to do next: a tick at ``tick_ns`` (``payload`` None), or a reading: ``payload`` as
    given to :meth:`SimTimeTicker.on_message`, with its ``bag_ns`` (the value of the last /clock
    published before it, if ``needs_bag_time`` was given; else None, as before any /clock)."""

    tick_ns: Optional[int]
    payload: Any
    bag_ns: Optional[int]


class SimTimeTicker:
    """Orders ticks on the ``period_ns`` grid and readings the way the bag player published them.

    Ticks are the absolute grid ``k * period_ns`` (as bag extraction uses), from the first grid
    point at or after the first ``/clock`` value. Everything waits in one queue ordered by
    source timestamp (a tick has the source timestamp of the ``/clock`` that triggered it), so a
    reading that arrives after a later-published ``/clock`` still runs before that clock's
    ticks; the head of the queue runs once a ``/clock`` published after it has arrived.

    All methods return the events to run now, in order.

    Attributes:
        ticks_dropped: grid points skipped because /clock jumped ahead by more than
            ``max_jump_ticks`` ticks at once: the first ``max_jump_ticks`` run (they see the
            readings of just before the gap), the later ones are dropped (by then every input
            has long gone stale, and a node would spend seconds on them).
        events_dropped: events discarded because time jumped back: those published before
            the ``/clock`` that jumped, queued or arriving soon after it (the end of the
            previous bag loop: they would land in freshly cleared buffers with stamps newer
            than everything of the new loop).
    """

    def __init__(self, period_ns: int, max_jump_ticks: int = 1000) -> None:
        if period_ns <= 0:
            raise ValueError(f'period_ns must be positive, got {period_ns}')
        self.period_ns = int(period_ns)
        self.max_jump_ticks = int(max_jump_ticks)
        self.ticks_dropped = 0
        self.events_dropped = 0
        self._clock: collections.deque[tuple[int, int]] = collections.deque(
            maxlen=CLOCK_HISTORY)  # (source_ns, bag_ns), in arrival (= publication) order
        # Waiting, sorted by (source_ns, arrival number), unique, so tuple order never looks
        # further: (source_ns, arrival, steady_ns queued, tick_ns, payload, needs_bag_time).
        # Short (a few entries): a plain list is fastest.
        self._queue: list[tuple[int, int, int, Optional[int], Any, bool]] = []
        self._arrivals = 0
        self._next_tick: Optional[int] = None
        self._last_clock_ns: Optional[int] = None
        # Source timestamp of the /clock that jumped back, until JUMP_GUARD_CLOCKS more
        # /clock messages have arrived (only an overtaken reading can be from before it then).
        self._jump_source_ns: Optional[int] = None
        self._clocks_since_jump = 0

    @property
    def last_clock_ns(self) -> Optional[int]:
        """The last ``/clock`` value received (None before the first)."""
        return self._last_clock_ns

    @property
    def waiting(self) -> int:
        """Ticks and readings queued (normally a few)."""
        return len(self._queue)

    def on_clock(self, source_ns: int, clock_ns: int, steady_ns: int
                 ) -> tuple[list[Event], bool]:
        """A ``/clock`` message: (events to run now; whether time jumped back).

        After a jump back everything queued that was published before this ``/clock`` is
        dropped (the caller clears its buffers) and the grid restarts at the new time; so is
        every reading published before it that arrives after it (until
        :data:`JUMP_GUARD_CLOCKS` more ``/clock`` messages). A reading published after it
        that overtook it (the new loop's first) stays queued.
        """
        jumped_back = self._last_clock_ns is not None and clock_ns < self._last_clock_ns
        if jumped_back:
            self._jump_source_ns, self._clocks_since_jump = source_ns, 0
            # The queue is in source order: the entries published before the jump lead it.
            before = bisect.bisect_left(self._queue, (source_ns,))
            self.events_dropped += before
            del self._queue[:before]
            self._clock.clear()
            self._next_tick = None
        elif self._jump_source_ns is not None:
            self._clocks_since_jump += 1
            if self._clocks_since_jump >= JUMP_GUARD_CLOCKS:
                self._jump_source_ns = None
        self._clock.append((source_ns, clock_ns))
        self._last_clock_ns = clock_ns
        if self._next_tick is None:
            self._next_tick = -(-clock_ns // self.period_ns) * self.period_ns
        behind = (clock_ns - 1 - self._next_tick) // self.period_ns + 1  # grid points < clock
        # Due now, but they run after everything published before this /clock message (some
        # of it may still be on its way) and before anything published after it.
        for _ in range(min(behind, self.max_jump_ticks)):
            self._enqueue(source_ns, steady_ns, self._next_tick, None, False)
            self._next_tick += self.period_ns
        if behind > self.max_jump_ticks:
            skipped = behind - self.max_jump_ticks
            self.ticks_dropped += skipped
            self._next_tick += skipped * self.period_ns
        return self._release(), jumped_back

    def on_message(self, source_ns: int, payload: Any, steady_ns: int,
                   needs_bag_time: bool) -> list[Event]:
        """A reading published at ``source_ns`` (``needs_bag_time``: give it its bag time, e.g.
        to stamp it): the events to run now, in order (this reading waits for a later /clock)."""
        if self._jump_source_ns is not None and source_ns < self._jump_source_ns:
            self.events_dropped += 1  # from before time jumped back: see events_dropped
            return []
        self._enqueue(source_ns, steady_ns, None, payload, needs_bag_time)
        return self._release()

    def change_period(self, period_ns: int) -> list[Event]:
        """Tick every ``period_ns`` from the next ``/clock`` on (a live rate change). Returns
        everything waiting, in order, to run now (ticks on the old grid included): nothing
        queued is lost with the old grid. Counters and the ``/clock`` history carry on."""
        if period_ns <= 0:
            raise ValueError(f'period_ns must be positive, got {period_ns}')
        released = [self._event(entry) for entry in self._queue]
        self._queue.clear()
        self.period_ns = int(period_ns)
        self._next_tick = None
        return released

    def overdue(self, steady_ns: int, max_wait_ns: int) -> list[Event]:
        """Release, in order, everything up to the last entry that has waited ``max_wait_ns``
        (receive-stamped readings get the last /clock known before them)."""
        waited = [entry[2] <= steady_ns - max_wait_ns for entry in self._queue]
        if True not in waited:
            return []
        last = len(waited) - 1 - waited[::-1].index(True)
        released, self._queue[:last + 1] = self._queue[:last + 1], []
        return [self._event(entry) for entry in released]

    # -- internals ------------------------------------------------------------------------------

    def _enqueue(self, source_ns: int, steady_ns: int, tick_ns: Optional[int], payload: Any,
                 needs_bag_time: bool) -> None:
        self._arrivals += 1
        bisect.insort(self._queue, (source_ns, self._arrivals, steady_ns, tick_ns, payload,
                                    needs_bag_time))

    def _release(self) -> list[Event]:
        """The queue's head entries with a /clock published after them, in order."""
        events = []
        queue = self._queue
        while queue:
            if not self._clock or self._clock[-1][0] <= queue[0][0]:
                break  # no /clock published after it yet: what precedes it may be on its way
            events.append(self._event(queue.pop(0)))
        return events

    def _event(self, entry: tuple[int, int, int, Optional[int], Any, bool]) -> Event:
        source_ns, _, _, tick_ns, payload, needs_bag_time = entry
        return Event(tick_ns, payload, self._bag_time(source_ns) if needs_bag_time else None)

    def _bag_time(self, source_ns: int) -> Optional[int]:
        for clock_source, clock_ns in reversed(self._clock):
            if clock_source <= source_ns:
                return clock_ns
        return None
