"""The one rule for the CPU priority of what a benchmark starts: the service runs at the benchmark's own.

A benchmark compares a service it starts with a path it runs itself (the raw libraries, another checkout's
service) on the same shared cores, so both must compete for them at one priority: a service at nice 0 against a
raw path at nice 10 (or the reverse) would measure the scheduler, not the service. A child inherits its parent's
niceness and scheduling policy (Linux: per thread, from the thread that creates it), so a service started from
a benchmark run as `nice -n 10 python bench/...` or `chrt -f 10 python bench/...` runs as the benchmark does.
``check_same_priority`` makes that a checked fact rather than an assumption (a command that renices itself, a
wrapper, a scheduler change in between is refused), and ``describe`` puts the priority in each result's
conditions.

What the rule does not fix: under `nice -n 10` on a machine shared with work at nice 0, a request that crosses
several threads (the service: event loop, threadpool, engine pool, ONNX Runtime) waits for a CPU at each hop,
while the raw path runs in one thread. Ratios from such a run still compare like with like; its absolute
latencies are not the service's (stop 20 read the 100k service's p50 at 10.9-14.8 ms under `nice -n 10`, load 7,
against 5.5-6.6 ms under `chrt -f 10`). Absolute figures for a verdict come from a run at nice 0 on a quiet
machine (docs/benchmarks.md, "Reading the numbers").
"""

from __future__ import annotations

import os
from contextlib import suppress

POLICIES = {
    os.SCHED_OTHER: "SCHED_OTHER",
    os.SCHED_BATCH: "SCHED_BATCH",
    os.SCHED_IDLE: "SCHED_IDLE",
    os.SCHED_FIFO: "SCHED_FIFO",
    os.SCHED_RR: "SCHED_RR",
}


def own_priority() -> tuple[int, int, int]:
    """(nice, policy, real-time priority) of the calling thread: the one that runs a benchmark's own path."""
    policy = os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)
    return os.getpriority(os.PRIO_PROCESS, 0), policy, os.sched_getparam(0).sched_priority


def thread_priorities(pid: int) -> dict[int, tuple[int, int, int]]:
    """(nice, policy, real-time priority) of every thread of ``pid`` (/proc/PID/task/TID/stat fields 19, 41, 40)."""
    found = {}
    for task in os.scandir(f"/proc/{pid}/task"):
        with suppress(OSError), open(f"{task.path}/stat", "rb") as stat:
            # "pid (comm) state ...": fields after the last ')' start at field 3 (the state).
            fields = stat.read().rsplit(b")", 1)[1].split()
            found[int(task.name)] = (int(fields[16]), int(fields[38]), int(fields[37]))
    return found


def describe(priority: tuple[int, int, int]) -> str:
    nice, policy, rt = priority
    name = POLICIES.get(policy, f"policy {policy}")
    return f"{name} {rt}" if policy in (os.SCHED_FIFO, os.SCHED_RR) else f"nice {nice} ({name})"


def conditions() -> str:
    """The priority the benchmark (and so every service it started) ran at, for a result's conditions line."""
    priority = own_priority()
    text = f"benchmark and services at {describe(priority)}"
    if priority[1] not in (os.SCHED_FIFO, os.SCHED_RR) and priority[0] > 0:
        text += " (niced: compare the ratios; absolute latencies are not the service's, see 'Reading the numbers')"
    return text


def check_same_priority(pid: int) -> None:
    """Refuse (SystemExit) a started service any of whose threads runs at another priority than the benchmark's
    calling thread, naming both."""
    own = own_priority()
    for tid, theirs in sorted(thread_priorities(pid).items()):
        if theirs != own:
            raise SystemExit(
                f"the service (pid {pid}) runs thread {tid} at {describe(theirs)}, the benchmark at "
                f"{describe(own)}: both must run at one priority (bench/priority.py); start the whole benchmark "
                "under nice/chrt instead of the service alone"
            )
