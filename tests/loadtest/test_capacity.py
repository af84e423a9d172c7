"""loadtest.capacity: its stage attribution, and a small run of the real thing (the server
on the scripted instant engine, pinned to one core)."""

from __future__ import annotations

import json

from loadtest.capacity import OTHER, main, stage_of


def test_a_sample_belongs_to_the_deepest_stage_on_its_stack():
    planner = "plan_in_windows (server/audio/segment.py:190)"
    assert stage_of([planner, "SpeechDetector.regions (server/audio/vad.py:90)",
                     "SileroNetwork.__call__ (server/audio/silero.py:70)"]) == "VAD network"
    assert stage_of(["_decode_into (server/audio/decode.py:160)",
                     "_StreamResampler.feed (server/audio/decode.py:430)"]) == "resample"
    assert stage_of(["_decode_into (server/audio/decode.py:160)",
                     "_frames (server/audio/decode.py:378)"]) == "decode"
    assert stage_of([planner]) == "plan"
    assert stage_of(["Runner.run (asyncio/runners.py:118)"]) == OTHER


def test_a_small_run_serves_every_request_and_splits_the_cpu_by_process(tmp_path, capsys):
    assert main(["--cores", "1", "--per-kind", "1", "--rounds", "1", "--concurrency", "2",
                 "--port", "8819", "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "capacity.json").read_text())
    assert row["errors"] == {} and row["requests"] == 3
    assert row["audio_s_per_wall_s"] > 0
    # Decoding and the VAD ran in the preprocessing process, not the API process.
    by_process = row["process_cpu_ms_per_audio_s"]
    assert by_process["preprocessing"] > by_process["api"] > 0
    assert "audio s per wall s" in capsys.readouterr().out
