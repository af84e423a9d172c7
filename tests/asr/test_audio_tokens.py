"""One count of audio tokens: the plugin expands the prompt's placeholder to it and the
server plans with it (``SpeechEngine.audio_tokens``), both from config.json's
``window_size`` and ``downsample_rate``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from granite_speech_server.asr.vllm_engine import VllmEngine
from granite_speech_server.audio.features import audio_token_count

WINDOWINGS = [(15, 5), (10, 5)]
"""The 4.0-1b's, and one that counts differently (10 tokens a second of audio, not 12)."""


def _engine(checkpoint: dict | None) -> VllmEngine:
    return VllmEngine(SimpleNamespace(renderer=None), tokenizer=None, checkpoint=checkpoint)


def test_the_engine_counts_with_the_checkpoints_window_and_rate():
    assert _engine({"window_size": 10, "downsample_rate": 5}).audio_tokens(16000) == 10
    assert _engine({}).audio_tokens(16000) == _engine(None).audio_tokens(16000) == 12
    assert _engine({}).audio_tokens(30 * 16000) == audio_token_count(30 * 16000) == 300


@pytest.mark.parametrize(("window", "rate"), WINDOWINGS)
@pytest.mark.parametrize("seconds", [1, 7.3, 30])
def test_the_plugin_expands_the_placeholder_to_the_engines_count(window, rate, seconds):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from granite_speech_server.vllm_plugin import ARCHITECTURE, register
    from granite_speech_server.vllm_plugin.granite import (
        GraniteSpeechServerForConditionalGeneration,
    )
    from tests.conftest import TRAINED_MODEL

    register()
    samples = int(seconds * 16000)
    config = ModelConfig(
        model=str(TRAINED_MODEL), max_model_len=2048,
        hf_overrides={"architectures": [ARCHITECTURE], "window_size": window,
                      "downsample_rate": rate},
        limit_mm_per_prompt={"audio": {"count": 1, "length": samples}})
    engine = _engine({"window_size": window, "downsample_rate": rate})
    processor = MULTIMODAL_REGISTRY.create_processor(config)
    [placeholder] = processor.get_dummy_mm_inputs({"audio": 1})["mm_placeholders"]["audio"]
    assert placeholder.get_num_embeds() == engine.audio_tokens(samples)
    stt = SimpleNamespace(sample_rate=16000)
    assert GraniteSpeechServerForConditionalGeneration.get_num_audio_tokens(
        seconds, stt, config) == engine.audio_tokens(samples)
