"""GPU time of a call, with its host time apart: the one timer of bench/gpu_timings.py and of the
CUDA cases of the pytest-benchmark suites (docs/design.md, "Benchmarks").

Two events around one call, with nothing queued ahead of it, record the larger of the host's
time to issue the call and the device's time to run it: a call that costs the host 150 us
reads 150 us however fast its kernels are. So each batch here is

1. a **hold**: a kernel that keeps the device busy (``torch.cuda._sleep``) for longer than the
   host needs to issue the batch, bracketed by events so its real length is known;
2. the start event, ``calls`` (at least 50) calls back to back, the end event;
3. one synchronisation.

While the hold runs, the host queues every call of the batch, so the device runs them back to
back with no gap between them or between their own launches: end - start is the device's time
alone. The host's time to issue the batch is measured by the host clock, per call, and
reported apart (``host_ms``). A batch whose issue took longer than its hold (the queue may have
run dry) is counted in ``short_holds`` and the next hold is twice as long. The medians over
``batches`` batches are reported, after ``warmup`` untimed calls.

``replay_ms``, where asked: the call captured once into a CUDA graph and the graph replayed
``calls`` times between the events, on the same schedule (launch gaps inside the call gone too).
``hold=False``: no hold, for calls that synchronise by themselves (see ``time_calls``).

The device operations go through a ``Clock``, so that the tests run this logic on the CPU
(tests/test_gpu_scripts.py): ``CudaClock`` here, a host stand-in there.
"""

from __future__ import annotations

import statistics
import time

import torch

MIN_CALLS = 50  # back-to-back calls between two events, at least (the benchmark convention)
MAX_HOLD_MS = 200.0  # a hold doubles after a batch that outran it, up to this


class CudaClock:
    """The device side of ``time_calls`` on the current CUDA device and stream."""

    def __init__(self):
        self._cycles_per_ms = None

    def event(self):
        return torch.cuda.Event(enable_timing=True)

    @staticmethod
    def elapsed_ms(start, end) -> float:
        return start.elapsed_time(end)

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def cycles_per_ms(self) -> float:
        """The sleep kernel's clock cycles per ms, measured once (the SM clock varies by device
        and by load)."""
        if self._cycles_per_ms is None:
            cycles = 2_000_000
            torch.cuda._sleep(cycles // 10)   # first launch out of the way
            start, end = self.event(), self.event()
            start.record()
            torch.cuda._sleep(cycles)
            end.record()
            end.synchronize()
            self._cycles_per_ms = cycles / max(start.elapsed_time(end), 1e-3)
        return self._cycles_per_ms

    def hold(self, ms: float) -> None:
        """Keeps the device busy for about ``ms`` from when the queue reaches this point."""
        torch.cuda._sleep(max(1, int(ms * self.cycles_per_ms())))

    def capture(self, fn):
        """``fn`` captured into a CUDA graph (after a warm-up on a side stream, as
        torch.cuda.graph asks); returns the replay."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay


class HostClock:
    """The host standing in for the device, so that the timing logic runs where there is no GPU
    (tests/test_cuda_timing.py, tests/test_gpu_scripts.py): events read the host clock, work
    finishes when it is issued, a hold is nothing and a capture is the call itself."""

    class Event:
        def __init__(self):
            self.at = None

        def record(self):
            self.at = time.perf_counter()

    def event(self):
        return self.Event()

    @staticmethod
    def elapsed_ms(start, end) -> float:
        return 1e3 * (end.at - start.at)

    def synchronize(self) -> None:
        pass

    def hold(self, ms: float) -> None:
        pass

    def capture(self, fn):
        return fn


def _batch(fn, clock, calls: int, hold_ms: float | None):
    """One timed batch: (device ms per call, host ms per call, whether the hold outlasted the
    issue of the batch; None without a hold)."""
    hold_start, start, end = clock.event(), clock.event(), clock.event()
    hold_start.record()
    if hold_ms is not None:
        clock.hold(hold_ms)
    start.record()
    issue = time.perf_counter()
    for _ in range(calls):
        fn()
    issue = time.perf_counter() - issue
    end.record()
    clock.synchronize()
    held = None if hold_ms is None else 1e3 * issue < clock.elapsed_ms(hold_start, start)
    return clock.elapsed_ms(start, end) / calls, 1e3 * issue / calls, held


def _batches(fn, clock, calls: int, batches: int, hold_ms: float | None):
    """``batches`` timed batches; a hold doubles after a batch that outran it."""
    device, host, short = [], [], 0
    for _ in range(batches):
        d, h, held = _batch(fn, clock, calls, hold_ms)
        device.append(d)
        host.append(h)
        if held is False:
            short += 1
            hold_ms = min(2 * hold_ms, MAX_HOLD_MS)
    return device, host, short


def time_calls(fn, clock=None, *, warmup: int = 3, calls: int = MIN_CALLS, batches: int = 5,
               hold: bool = True, replay: bool = False) -> dict:
    """Device time per call of ``fn`` (median over batches of ``calls`` back-to-back calls, the
    queue held full), the host's time per call apart; with ``replay``, also per replay of a
    CUDA graph of one call (``replay_ms``, or ``replay_error``).

    ``hold=False`` for calls that synchronise with the device themselves (an eigensolver's
    convergence check): no hold can keep their queue full, and their time between the events is
    the host's and the device's together, as a user sees it."""
    if calls < 1 or batches < 1:
        raise ValueError(f"calls and batches must be at least 1, got {calls} and {batches}")
    clock = clock or CudaClock()
    for _ in range(warmup):
        fn()
    clock.synchronize()
    hold_ms = None
    if hold:  # the first hold: 1.5x the batch's issue time, by one call's
        issue = time.perf_counter()
        fn()
        hold_ms = min(1.5e3 * (time.perf_counter() - issue) * calls + 0.05, MAX_HOLD_MS)
        clock.synchronize()
    device, host, short = _batches(fn, clock, calls, batches, hold_ms)
    record = {"median_ms": statistics.median(device), "min_ms": min(device),
              "max_ms": max(device), "host_ms": statistics.median(host), "calls": calls,
              "batches": batches, "warmup": warmup, "held": hold}
    if hold:
        record["short_holds"] = short
    if replay:
        try:
            graph = clock.capture(fn)
        except Exception as e:  # some calls cannot be captured; the eager timing stands
            record["replay_error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        else:
            replayed, _, _ = _batches(graph, clock, calls, batches, hold_ms)
            record["replay_ms"] = statistics.median(replayed)
    return record


class DeviceTimer:
    """A pytest-benchmark timer (``benchmark._timer``, the hook behind --benchmark-timer) that
    reads device time, for ``benchmark.pedantic(fn, iterations=calls, ...)``: pytest-benchmark
    calls it before and after each round of ``calls`` calls and takes the difference. Before,
    it holds the device (as ``time_calls`` does) and records the start event; after, it records
    the end event, synchronises and returns the device time in seconds. The host's time to
    issue each round is kept apart (``host_s``), as is the count of rounds that outran their
    hold (``short_holds``; the hold then doubles)."""

    __name__ = "cuda_device_time"   # how pytest-benchmark names its timer in the JSON

    def __init__(self, clock=None, hold_ms: float = 1.0):
        self.clock = clock or CudaClock()
        self.hold_ms = hold_ms
        self.host_s: list[float] = []
        self.short_holds = 0
        self._round = None

    def __call__(self) -> float:
        if self._round is None:
            self.clock.synchronize()
            hold_start, start = self.clock.event(), self.clock.event()
            hold_start.record()
            self.clock.hold(self.hold_ms)
            start.record()
            self._round = (hold_start, start, time.perf_counter())
            return 0.0
        hold_start, start, issued = self._round
        self._round = None
        issue = time.perf_counter() - issued
        end = self.clock.event()
        end.record()
        self.clock.synchronize()
        self.host_s.append(issue)
        if 1e3 * issue >= self.clock.elapsed_ms(hold_start, start):
            self.short_holds += 1
            self.hold_ms = min(2 * self.hold_ms, MAX_HOLD_MS)
        return self.clock.elapsed_ms(start, end) / 1e3


def pedantic_device_time(benchmark, fn, *, rounds: int, calls: int = MIN_CALLS, clock=None):
    """``benchmark.pedantic`` of ``fn`` in rounds of ``calls`` back-to-back calls timed by a
    ``DeviceTimer`` (one warm-up round): the stats are device time per call; extra_info gets the
    host's issue time per call (``host_ms``, median over rounds), ``calls_per_round`` and
    ``short_holds``."""
    timer = DeviceTimer(clock)
    fn()                      # a first call (auto's measurement, cuDNN's plans) before sizing
    timer.clock.synchronize()
    issue = time.perf_counter()
    fn()
    timer.hold_ms = min(1.5 * 1e3 * (time.perf_counter() - issue) * calls + 0.05, MAX_HOLD_MS)
    previous = benchmark._timer
    benchmark._timer = timer
    try:
        result = benchmark.pedantic(fn, rounds=rounds, iterations=calls, warmup_rounds=1)
    finally:
        benchmark._timer = previous
    # the warm-up round's issue time is not a result
    benchmark.extra_info.update(host_ms=1e3 * statistics.median(timer.host_s[1:]) / calls,
                                calls_per_round=calls, short_holds=timer.short_holds)
    return result
