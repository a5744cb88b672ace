"""bench/cuda_timing.py on the CPU: what a GPU timing does, step by step, against a scripted
clock -- warm-up, a hold before each batch, at least 50 calls back to back between two events,
one synchronisation per batch, device time from the events and host time apart, longer holds
after a batch that outran its hold, graph replay -- and its pytest-benchmark timer inside a
real pytest-benchmark run."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import cuda_timing  # noqa: E402


class ScriptedClock:
    """A device whose events read a virtual clock: each call advances it by ``call_ms`` and a
    hold by its length (or by ``hold_runs_ms`` when given: a hold shorter than asked). Logs
    every operation, calls included."""

    def __init__(self, call_ms=2.0, hold_runs_ms=None):
        self.now = 0.0
        self.call_ms = call_ms
        self.hold_runs_ms = hold_runs_ms
        self.log = []
        self.holds = []

    class Event:
        def __init__(self, clock):
            self.clock, self.at = clock, None

        def record(self):
            self.at = self.clock.now
            self.clock.log.append("record")

    def event(self):
        return self.Event(self)

    @staticmethod
    def elapsed_ms(start, end):
        return end.at - start.at

    def synchronize(self):
        self.log.append("sync")

    def hold(self, ms):
        self.holds.append(ms)
        self.now += ms if self.hold_runs_ms is None else self.hold_runs_ms
        self.log.append("hold")

    def capture(self, fn):
        self.log.append("capture")

        def replay():
            self.log.append("replay")
            self.now += self.call_ms / 2
        return replay

    def call(self):
        self.log.append("call")
        self.now += self.call_ms


def test_batches_of_back_to_back_calls_behind_a_hold():
    clock = ScriptedClock(call_ms=2.0)
    record = cuda_timing.time_calls(clock.call, clock, warmup=3, calls=50, batches=2)
    batch = ["record", "hold", "record"] + ["call"] * 50 + ["record", "sync"]
    assert clock.log == ["call"] * 3 + ["sync", "call", "sync"] + batch * 2
    assert record["median_ms"] == pytest.approx(2.0)          # device time per call
    assert record["calls"] == 50 and record["batches"] == 2 and record["held"]
    assert 0 < record["host_ms"] < 2.0                         # the host's own, apart
    assert record["short_holds"] == 0 and len(set(clock.holds)) == 1


def test_a_hold_the_host_outran_doubles_up_to_a_cap():
    clock = ScriptedClock(hold_runs_ms=0.0)   # the queue runs dry every time
    record = cuda_timing.time_calls(clock.call, clock, warmup=0, calls=50, batches=20)
    assert record["short_holds"] == 20
    holds = clock.holds
    assert all(b == min(2 * a, cuda_timing.MAX_HOLD_MS) for a, b in zip(holds, holds[1:]))
    assert holds[-1] == cuda_timing.MAX_HOLD_MS


def test_without_a_hold_and_with_replay():
    clock = ScriptedClock(call_ms=4.0)
    record = cuda_timing.time_calls(clock.call, clock, warmup=1, calls=5, batches=1, hold=False,
                                    replay=True)
    assert "hold" not in clock.log and "short_holds" not in record and not record["held"]
    assert record["median_ms"] == pytest.approx(4.0) and record["replay_ms"] == pytest.approx(2.0)
    assert clock.log.count("capture") == 1 and clock.log.count("replay") == 5

    def no_capture(fn):
        raise RuntimeError("operation not permitted when stream is capturing\nmore")
    clock.capture = no_capture
    record = cuda_timing.time_calls(clock.call, clock, calls=5, batches=1, replay=True)
    assert record["replay_error"] == ("RuntimeError: operation not permitted when stream is "
                                      "capturing")
    assert record["median_ms"] == pytest.approx(4.0)


def test_bad_sizes_are_value_errors():
    for kwargs in ({"calls": 0}, {"batches": 0}):
        with pytest.raises(ValueError, match="at least 1"):
            cuda_timing.time_calls(lambda: None, cuda_timing.HostClock(), **kwargs)


def test_the_host_clock_times_host_work():
    import time

    record = cuda_timing.time_calls(lambda: time.sleep(0.001), cuda_timing.HostClock(), warmup=0,
                                    calls=50, batches=1)
    assert record["median_ms"] >= 1.0 and record["host_ms"] >= 1.0


def test_device_timer_in_a_pytest_benchmark_run(benchmark):
    # pytest-benchmark's own pedantic loop around the timer: the stats it keeps are the
    # scripted device time per call, the host's is in extra_info.
    clock = ScriptedClock(call_ms=3.0)
    cuda_timing.pedantic_device_time(benchmark, clock.call, rounds=4, calls=50, clock=clock)
    assert benchmark.stats.stats.median == pytest.approx(3.0e-3)
    assert benchmark.stats.stats.rounds == 4
    info = benchmark.extra_info
    assert info["calls_per_round"] == 50 and info["host_ms"] > 0
    # A round whose issue took the host (real time) as long as its hold (virtual time, sized
    # from the host's first call) is short, and the next hold twice as long: how many there are
    # depends on the machine's load, but every one of them but a last round's doubled a hold.
    doubled = sum(b == 2 * a for a, b in zip(clock.holds, clock.holds[1:]))
    assert all(b in (a, 2 * a) for a, b in zip(clock.holds, clock.holds[1:])), clock.holds
    assert doubled <= info["short_holds"] <= doubled + 1
    # each timed round: the timer holds and starts, 50 calls, the timer ends and synchronises
    rounds = "".join("S" if op == "sync" else "h" if op == "hold" else "c" if op == "call" else ""
                     for op in clock.log)
    assert rounds.count("S" + "h" + "c" * 50 + "S") >= 4 + 1   # the rounds and the warm-up round
