"""The exact prompt text the engine receives, for each task and option."""

from __future__ import annotations

import pytest

from server.asr.transcriber import TranscriptionOptions
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
