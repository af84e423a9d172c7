"""The benchmark and the locust workload run against a live server and report sanely."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from loadtest import bench, soak
from loadtest.corpus import Recording, Request, encode, recordings, requests
from tools.long_audio import long_recording

ON_THE_SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def short_recording() -> Recording:
    samples, placed = long_recording(8, distinct=3)
    return Recording("short.mp3", samples.size / 16000, encode(samples, ".mp3"), ".mp3",
                     " ".join(p.text for p in placed), "short")


@ON_THE_SESSION_LOOP
async def test_bench_measures_throughput_latency_and_first_delta(server_url, short_recording,
                                                                  tmp_path):
    work = [Request(short_recording, "transcriptions", stream, "json")
            for stream in (True, False, True, False)]
    results = await bench.bench(server_url, "tiny-granite-speech", "granite-speech-server",
                                work[0], [work, work], [1, 2], None)
    assert [r.concurrency for r in results] == [1, 2]
    for result in results:
        assert result.requests == 4 and result.errors == {}
        assert result.rtfx > 0 and result.requests_per_s > 0
        assert result.latency_s["p50"] <= result.latency_s["p99"]
        assert 0 < result.first_delta_s["p50"] <= result.latency_s["p99"]
        assert set(result.latency_p50_by_kind) == {"short"}
        assert result.latency_p50_by_kind["short"] == result.latency_s["p50"]
    plots = bench.plot(results, tmp_path)
    assert all(p.stat().st_size > 1000 for p in plots)


def test_corpus_mixes_kinds_formats_and_modes():
    recs = recordings(per_kind=1)
    assert {r.suffix for r in recs} == {".wav", ".mp3", ".ogg"}
    assert max(r.seconds for r in recs) > 100 and min(r.seconds for r in recs) < 10
    mixed = requests(recs, 60)
    assert {r.endpoint for r in mixed} == {"transcriptions", "translations"}
    assert any(r.stream for r in mixed) and any(not r.stream for r in mixed)
    comparable = requests(recs, 60, comparable=True)
    assert {(r.endpoint, r.response_format) for r in comparable} == {("transcriptions", "json")}
    unique = requests(recs, len(recs))
    assert len({id(r.recording) for r in unique}) == len(recs), "no audio repeats"


@ON_THE_SESSION_LOOP
async def test_locust_runs_the_workload_headless(server_url):
    """In a subprocess, asynchronously: the server runs in this test's event loop."""
    env = {**os.environ, "GRANITE_SPEECH_MODEL_NAME": "tiny-granite-speech"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
        "--host", server_url, "--headless", "-u", "2", "-r", "2", "-t", "8s",
        "--only-summary", "--exit-code-on-error", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=ROOT)
    output = (await asyncio.wait_for(proc.communicate(), timeout=300))[0].decode()
    assert "transcribe" in output
    assert proc.returncode == 0, output[-3000:]


def test_soak_verdict_looks_for_a_trend_not_a_single_swing():
    def report(rss: list[float]) -> dict:
        return {"statuses": {"200": 10, "503": 1},
                "samples": [{"t_s": 10.0 * i, "rss_mb": mb, "fds": 5, "threads": 7}
                            for i, mb in enumerate(rss)]}

    sawtooth = [900, 1000, 1100, 1200, 1000, 1100, 1200, 1000, 1100, 1200, 1000]
    flat = soak.verdict(report(sawtooth))
    assert flat["server_errors"] == 1 and flat["rss_peak_mb"] == 1200
    assert abs(flat["rss_growth_after_warmup"]) < 0.1
    leak = soak.verdict(report([1000 + 50 * i for i in range(11)]))
    assert leak["rss_growth_after_warmup"] > 0.25


@ON_THE_SESSION_LOOP
async def test_cpu_report_reads_the_engine_work_off_the_servers_metrics(server_url,
                                                                         short_recording):
    """``loadtest.cpu`` prints what the engine did from the server's own counters."""
    from loadtest import cpu

    # The server shares this event loop: read its metrics from a thread.
    before = await asyncio.to_thread(cpu.counters, server_url)
    await bench.run_level(server_url, "tiny-granite-speech",
                          [Request(short_recording, "transcriptions", False, "json")], 1, None,
                          "cpu")
    after = await asyncio.to_thread(cpu.counters, server_url)
    # At least ours: the server is shared, and another test's request may finish meanwhile.
    assert after["granite_speech_segments_per_request_count"] >= \
        before.get("granite_speech_segments_per_request_count", 0) + 1
    assert after["granite_speech_output_tokens_total"] > \
        before.get("granite_speech_output_tokens_total", 0)


def test_cpu_report_counts_the_preprocessing_processes():
    """Every descendant that isn't vLLM's is ours (the preprocessing processes), and
    its CPU counts."""
    import subprocess
    import time

    import psutil

    from loadtest import cpu

    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n" \
           "time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", busy])
    try:
        roles = cpu.server_processes(psutil.Process())
        # Other tests' servers may have children of this process too: ours is among them.
        assert child.pid in [p.pid for p in roles["preprocessing"]]
        assert [p.pid for p in roles["api"]] == [psutil.Process().pid]
        assert not any(p.name().startswith("VLLM::") for p in roles["preprocessing"])
        deadline = time.monotonic() + 30
        while cpu.cpu_seconds(roles)["preprocessing"] < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cpu.cpu_seconds(roles)["preprocessing"] >= 0.3
    finally:
        child.kill()
        child.wait()


def test_cpu_report_says_what_binds_the_run():
    from loadtest import cpu

    lines = cpu.cpu_lines({"api": 7.0, "VLLM::Worker": 5.5}, wall_s=8.0, cores=2)
    assert "88% of the wall" in lines[0] and "69% of the wall" in lines[1]
    assert lines[-1].split()[3] == "12.50" and "78% of 2 cores" in lines[-1]


@ON_THE_SESSION_LOOP
async def test_interleaved_parts_go_to_every_server_in_turn(server_url, short_recording):
    work = [Request(short_recording, "transcriptions", stream, "json")
            for stream in (False, True, False, True, False, True)]
    targets = [bench.Target(server_url, "tiny-granite-speech", name) for name in ("a", "b")]
    results = await bench.bench_interleaved(targets, work[0], [work], [2], blocks=3)
    assert [(r.server, r.concurrency) for r in results] == [("a", 2), ("b", 2)]
    for result in results:
        assert result.requests == 6 and result.errors == {}
        assert result.latency_s["p50"] < result.wall_s
        assert 0 < result.first_delta_s["p50"] <= result.latency_s["p99"]


def test_a_server_that_dies_at_start_up_is_reported_with_its_log(tmp_path):
    from loadtest.servers import running

    log = tmp_path / "server.log"
    command = [sys.executable, "-c", "import sys; print('bad flag'); sys.exit(2)"]
    with pytest.raises(RuntimeError, match="exited with 2") as failure:
        with running(command, "/ready", 8999, log, timeout_s=60):
            pass
    assert str(log) in str(failure.value)
    assert "bad flag" in log.read_text()


@ON_THE_SESSION_LOOP
async def test_timeout_report_reads_the_engine_queue_off_the_servers_metrics(server_url):
    """``loadtest.timeout`` times the engine's drain from this gauge: were it gone, every
    drain would read as instant, so its absence is an error."""
    import httpx

    from loadtest import timeout

    with httpx.Client(base_url=server_url, timeout=30) as client:
        queued = await asyncio.to_thread(timeout.engine_requests, client)
        idle_s = await asyncio.to_thread(timeout.idle_after, client)
    assert queued >= 0 and idle_s is not None
