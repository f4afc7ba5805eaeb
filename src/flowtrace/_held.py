"""Held records: the calls of an unsampled trace that nothing needed a Log of yet.

The recorder's cheapest unsampled call is a plain function called with scalar arguments: it
enters the context as a record (a list), not a Log. The trace's root is a `HeldRoot`; a call
under a held record is a `HeldChild`, listed in its root's record as it starts. A trace that is
dropped, the common case, never makes a Log, takes no lock and announces nothing: it costs a
list and a context push per call, and its root's end counts its records.

A record becomes a Log (`held_log`) only when something needs one:

- code under it asks for the current log (a print, `current_log()`, a span, propagation
  headers, a block, a generator or an async log opening under it), or its call raised, or
  returned something to copy;
- its trace may be kept (its root raised, or ran slow, or something under it made the root's
  Log): the root's end makes the Logs of its child records and hands them to its hold
  (`_sampling.DormantRoot`), which decides the trace as it decides any held trace; so does a
  trace that grows past `HOLD_MAX_LOGS` records.

Every change to a record is one `list.append` (atomic): two threads that both append (a call's
end, and another thread making its Log) learn from the record which came first. What is made
or taken after a call's end happens under one lock (`_records_lock`), never on the common path.
"""

from __future__ import annotations

import os
import threading
from typing import Any, cast

from flowtrace import _guard, _log, _sampling
from flowtrace._log import Log
from flowtrace._sampling import DormantRoot

__all__ = [
    "HELD_ENDED",
    "HeldChild",
    "HeldRoot",
    "drop_children",
    "held_log",
    "release_children",
    "release_late",
]

#: A held root's record: [number, start on the monotonic clock, its flow's LogOptions, its
#: scalar arguments, the child records that started under it (HeldChild, in start order)].
#: Appended once, atomically: its Log (made by `held_log`) or `HELD_ENDED` (it ended before
#: anything needed one); a root whose Log was made gets `HELD_ENDED` after it, at its end.
#: So a root runs while it has fewer than 7 items and its last is not `HELD_ENDED` (the
#: recorder checks this at a child's end). A Log is appended only while the root has 5 items
#: (under `_root_lock`), once; one made as the root ends may follow its `HELD_ENDED`, unused.
HeldRoot = list[Any]
#: A held child's record: [its root's record, start on the monotonic clock, its flow's
#: LogOptions, its scalar arguments, its parent's record (a root's or a child's), its duration
#: (None while it runs), its result]. Appended once, atomically: its Log (made while it ran) or
#: `HELD_ENDED` (it ended as a record; its Log, if one is made later, follows).
HeldChild = list[Any]
HELD_ENDED: Any = object()

ROOT_CHILDREN = 4  # a HeldRoot's list of child records
ROOT_MADE = 5  # a HeldRoot's Log, or HELD_ENDED
CHILD_PARENT = 4
CHILD_DURATION = 5
CHILD_RESULT = 6
CHILD_MADE = 7  # a HeldChild's Log made while it ran, or HELD_ENDED
CHILD_MADE_LATE = 8  # the Log of a HeldChild made after it ended

# Over making a child record's Log and over taking a root's child records; and (inside it, or
# alone) over making a root record's Log.
_records_lock = threading.Lock()
_root_lock = threading.Lock()


def held_log(record: list[Any]) -> Log:
    """A record's Log, made once (the same Log in every context and thread holding the
    record), with those of its ancestors that were not made yet, outermost first; each one
    made is announced to its trace's hold."""
    if type(record[0]) is int:
        return _root_log(record)
    made = _made(record)
    if made is not None:
        return made
    with _records_lock:
        return _child_log(record)


def _root_log(record: HeldRoot) -> DormantRoot:
    if len(record) > ROOT_MADE:  # made before (each log that opens under the root asks)
        made: Any = record[ROOT_MADE]
        if made is not HELD_ENDED:
            return cast(DormantRoot, made)
    number, start_mono_ns, options, args = record[:ROOT_CHILDREN]
    with _root_lock:
        if len(record) == ROOT_MADE:
            dormant: DormantRoot = _sampling.dormant_root(number, start_mono_ns, options, args)
            record.append(dormant)
            first = record[ROOT_MADE] is dormant  # else the root ended meanwhile (HELD_ENDED)
            if first:
                return dormant
        made = record[ROOT_MADE]
    if made is not HELD_ENDED:
        return cast(DormantRoot, made)
    # The root ended, dropped, before anything needed its Log (a thread it started opens a log
    # under it now): a stand-in that ended as dropped, so what opens under it is dropped too.
    late = _sampling.dormant_root(number, start_mono_ns, options, args)
    late.decided = False
    late.trace_hold = _sampling.DROPPED
    late.duration_ns = max(0, _log._mono_ns() - start_mono_ns)  # at the latest
    return late


def _made(record: HeldChild) -> Log | None:
    """A child record's Log, if one was made."""
    if len(record) > CHILD_MADE:
        made = record[CHILD_MADE]
        if made is not HELD_ENDED:
            return cast(Log, made)
        if len(record) > CHILD_MADE_LATE:
            return cast(Log, record[CHILD_MADE_LATE])
    return None


def _child_log(record: HeldChild) -> Log:
    """(Under `_records_lock`.) A loop, not recursion: a trace may be thousands deep."""
    chain: list[HeldChild] = []
    current = record
    while True:
        if type(current[0]) is int:
            base: Log = _root_log(current)
            break
        made = _made(current)
        if made is not None:
            base = made
            break
        chain.append(current)
        current = current[CHILD_PARENT]
    for each in reversed(chain):
        base = _make_child(each, base)
    return base


def _make_child(record: HeldChild, parent: Log) -> Log:
    """What `Log.__init__` makes of a call with scalar arguments under `parent` (the record's
    parent's Log), started when the record did; ended too if the record has."""
    log: Log = object.__new__(Log)
    log._number = next(_log._counter)
    log.options = record[2]
    log.user_fields = None
    log.trace_hold = parent.trace_hold
    log.parent = parent
    log.args = record[3]
    log._start_mono_ns = record[1]
    log.duration_ns = None
    counted = _counted_with_its_root(record)
    if len(record) == CHILD_MADE:  # still running: its Log now, if its end does not come first
        record.append(log)
        first = record[CHILD_MADE] is log
        if first:
            if not counted:
                _announce(log, True)
            return log
    # It ended as a record (its end came first): its Log is an ended one (`log` went in as the
    # Log made late if it lost the race above; else it goes in now).
    log.duration_ns = record[CHILD_DURATION]
    log.result = record[CHILD_RESULT]
    if len(record) == CHILD_MADE_LATE:
        record.append(log)
    if not counted:
        _announce(log, True)
    return log


def _counted_with_its_root(record: HeldChild) -> bool:
    """(Under `_records_lock`.) Whether the record's root ended dropped, as a record, and took
    it (`drop_children` counted it then): its Log, made now for a log opening under it, is not
    counted again. A record that started after that is still in the root's list."""
    root: HeldRoot = record[0]
    if len(root) <= ROOT_MADE or root[ROOT_MADE] is not HELD_ENDED:
        return False
    return not any(child is record for child in root[ROOT_CHILDREN])


def release_children(root: HeldRoot) -> None:
    """Hand the root's child records to the trace's hold as Logs: the root is ending with a
    Log (its trace may be kept), or holds too many. Their starts go in the order they started
    (a child still running gets an open Log, which its own end closes), then the ends of those
    that ended as records, in the order they ended."""
    with _records_lock:
        children = _take_children(root)
        for child in children:
            _child_log(child)
    _announce_ends([child for child in children if child[CHILD_MADE] is HELD_ENDED])


def release_late(child: HeldChild) -> None:
    """A child that ended as a record after its root ended: unless the root's end took it, it
    goes to its trace's hold (a kept trace's late log, or one more log of a dropped trace)."""
    root: HeldRoot = child[0]
    with _records_lock:
        children: list[HeldChild] = root[ROOT_CHILDREN]
        for index in range(len(children) - 1, -1, -1):
            if children[index] is child:
                break
        else:
            return  # taken by the root's end
        _child_log(child)  # (while listed: it is not one its root counted)
        del children[index]  # (others only append meanwhile: the index holds)
    _announce_ends([child])


def drop_children(root: HeldRoot) -> int:
    """The root ended dropped, with no Log: its child records go with it (those still running
    included: they find the root ended, and taken them). How many."""
    with _records_lock:
        return len(_take_children(root))


def _take_children(root: HeldRoot) -> list[HeldChild]:
    """(Under `_records_lock`.) A child starting meanwhile appends behind what is taken: its
    end finds the root ended, and releases it (`release_late`)."""
    children: list[HeldChild] = root[ROOT_CHILDREN]
    count = len(children)
    taken = children[:count]
    del children[:count]
    return taken


def _announce_ends(children: list[HeldChild]) -> None:
    """The ends of records that ended as such (their Logs made), by their end on the monotonic
    clock; of two that ended at the same reading, the one that started later (a child) first."""
    order = sorted(
        range(len(children)),
        key=lambda i: (children[i][1] + children[i][CHILD_DURATION], -i),
    )
    for index in order:
        log = _made(children[index])
        if log is not None:
            _announce(log, False)


def _announce(log: Log, opening: bool) -> None:
    with _guard.guarded("log-open" if opening else "log-end"):
        if opening:
            log.announce_start()
        else:
            log.announce_end()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        after_in_child=lambda: globals().update(
            _records_lock=threading.Lock(), _root_lock=threading.Lock()
        )
    )
