"""The exact prompt text the engine receives, for each task and option."""

from __future__ import annotations

import pytest

from granite_speech_server.asr.transcript import TranscriptionOptions
from tests.asr.test_transcriber_stream import ScriptedEngine, transcriber

pytestmark = pytest.mark.asyncio(loop_scope="session")

TURN = "USER: <|audio|>{}\n ASSISTANT:"


@pytest.mark.parametrize(
    ("options", "instruction"),
    [
        (TranscriptionOptions(), "can you transcribe the speech into a written format?"),
        (TranscriptionOptions(language="fr"), "can you transcribe the speech into a written format?"),
        (TranscriptionOptions(keywords=("Granite", "vLLM")),
         "can you transcribe the speech into a written format? Keywords: Granite, vLLM"),
        (TranscriptionOptions(task="translate", to_language="en"), "translate the speech to English"),
        (TranscriptionOptions(task="translate", language="en", to_language="it"),
         "translate the speech to Italian"),
        (TranscriptionOptions(task="translate", to_language="zh"), "translate the speech to Chinese"),
        (TranscriptionOptions(task="translate", to_language="ja", keywords=("IBM",)),
         "translate the speech to Japanese Keywords: IBM"),
    ],
)
async def test_prompt_text_for_each_task_and_option(options, instruction):
    engine = ScriptedEngine(["x", "y"], [0.001, 0.001])
    run, audio = transcriber(engine, 15)
    await run.transcribe(audio, options)
    sent = {engine.tokenizer.decode(request.prompt_token_ids) for request in engine.requests}
    assert sent == {TURN.format(instruction)}
    assert all(request.temperature == options.temperature for request in engine.requests)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_files_nth_segment_is_sent_with_priority_n(stream):
    """The engine serves lower priorities first: each file's first segments go ahead of
    the later segments of files already queued (the engine is built to honour it)."""
    from granite_speech_server.asr.vllm_engine import engine_args
    from granite_speech_server.config import Settings

    assert engine_args(Settings(model="m")).scheduling_policy == "priority"
    engine = ScriptedEngine(["a", "b", "c", "d"], [0.001] * 4)
    run, audio = transcriber(engine, 35)
    if stream:
        [_ async for _ in run.stream(audio, TranscriptionOptions())]
    else:
        await run.transcribe(audio, TranscriptionOptions())
    assert [request.priority for request in engine.requests] == [0, 1, 2, 3]
