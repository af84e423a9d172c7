"""The Granite speech prompt: instruction text and its chat-template rendering.

The instruction wording is the model's training format (MODEL.md, "Prompt"). The
surrounding turn markup is never written here: the checkpoint's own chat template
renders it, so a checkpoint with another template still gets the right prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

AUDIO_PLACEHOLDER = "<|audio|>"
TRANSCRIBE_INSTRUCTION = "can you transcribe the speech into a written format?"

LANGUAGE_NAMES = {
    "en": "English",
    "fr": "French",
    "de": "German",
    "es": "Spanish",
    "pt": "Portuguese",
    "ja": "Japanese",
    "it": "Italian",
    "zh": "Chinese",
}
"""ISO-639-1 code -> the English language name the instructions use."""

TRANSCRIPTION_LANGUAGES = ("en", "fr", "de", "es", "pt", "ja")
TRANSLATION_PAIRS = tuple(
    [(src, "en") for src in ("fr", "de", "es", "pt", "ja")]
    + [("en", dst) for dst in ("fr", "de", "es", "pt", "ja", "it", "zh")]
)
"""(source, target) pairs the model was trained to translate."""


def transcribe_instruction(keywords: Sequence[str] = ()) -> str:
    return TRANSCRIBE_INSTRUCTION + keyword_suffix(keywords)


def translate_instruction(to_language: str, keywords: Sequence[str] = ()) -> str:
    return f"translate the speech to {LANGUAGE_NAMES[to_language]}" + keyword_suffix(keywords)


def keyword_suffix(keywords: Sequence[str]) -> str:
    words = [word.strip() for word in keywords if word.strip()]
    return f" Keywords: {', '.join(words)}" if words else ""


def render_prompt(tokenizer: Any, instruction: str) -> list[int]:
    """Token ids of one user turn holding the audio placeholder and the instruction."""
    chat = [{"role": "user", "content": AUDIO_PLACEHOLDER + instruction}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    # The template already wrote every special token the model expects.
    return tokenizer.encode(text, add_special_tokens=False)
