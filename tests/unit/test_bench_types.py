"""servenest/bench/types.py: the records the benchmark's parts hand each other."""

from __future__ import annotations

from servenest.bench.types import LoadRun, RequestResult


def test_a_runs_repr_stays_small_however_long_its_streams():
    # asyncio reprs the finished main task's result when its Runner exits; a repr of every
    # chunk gap and every generated text cost a second of CPU after a long run.
    results = [RequestResult(i, 100, True, 500, ttft=0.01, itl=[0.002] * 500, latency=1.0,
                             generated_text="word " * 500) for i in range(200)]
    run = LoadRun(results, duration_s=60.0, client_cpu_s=1.0, cpu_wait_s=0.5)
    assert len(repr(run)) < 300 and "cpu_wait_s=0.5" in repr(run)
    one = repr(results[0])
    assert "word" not in one and "0.002" not in one and "output_tokens=500" in one
