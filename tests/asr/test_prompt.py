"""The exact prompt text the engine receives for each task and option."""

from __future__ import annotations

import pytest

from granite_speech_server.asr import prompt
from tools import tiny_model


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_model.build_tokenizer()


def test_transcription_prompt_is_the_models_chat_turn(tokenizer):
    ids = prompt.render_prompt(tokenizer, prompt.transcribe_instruction())
    assert tokenizer.decode(ids) == (
        "USER: <|audio|>can you transcribe the speech into a written format?\n ASSISTANT:"
    )
    assert ids.count(tokenizer.convert_tokens_to_ids("<|audio|>")) == 1


@pytest.mark.parametrize(
    ("code", "name"),
    [("en", "English"), ("fr", "French"), ("de", "German"), ("es", "Spanish"),
     ("pt", "Portuguese"), ("ja", "Japanese"), ("it", "Italian"), ("zh", "Chinese")],
)
def test_translation_instruction_names_the_language_in_english(code, name):
    assert prompt.translate_instruction(code) == f"translate the speech to {name}"


def test_keywords_are_appended_in_the_models_form():
    assert prompt.transcribe_instruction(["Granite", " vLLM ", ""]) == (
        "can you transcribe the speech into a written format? Keywords: Granite, vLLM"
    )
    assert prompt.translate_instruction("fr", ["IBM"]) == "translate the speech to French Keywords: IBM"


def test_no_keywords_means_no_suffix():
    assert prompt.transcribe_instruction([]) == prompt.TRANSCRIBE_INSTRUCTION
    assert prompt.keyword_suffix(["  "]) == ""


def test_translation_pairs_cover_both_directions():
    assert ("fr", "en") in prompt.TRANSLATION_PAIRS and ("en", "zh") in prompt.TRANSLATION_PAIRS
    assert ("fr", "de") not in prompt.TRANSLATION_PAIRS
