"""Which language a transcript is written in: lingua over the text, restricted to the
model's languages, or nothing when it can't tell.

Granite's prompt names no language: the model writes what it hears in the language it
hears, so the transcript's language is the spoken one: a text classifier restricted to the
six languages the model transcribes tells it without a second network over the audio
(loadtest/language_id.py measures how well). lingua (the lingua-language-detector
package) ships its n-gram models in the wheel, needs no download, and answers "unsure"
(``None``) when the two likeliest languages are too close: then ``languages`` is empty,
as OpenAI's is when nothing could be detected reliably, never a guess.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from lingua import IsoCode639_1, LanguageDetector, LanguageDetectorBuilder

from granite_speech_server.asr.prompt import TRANSCRIPTION_LANGUAGES

MIN_RELATIVE_DISTANCE = 0.25
"""How far ahead of the runner-up the likeliest language must be (lingua's confidence
scale, 0-1). Lower answers on shorter texts and guesses more often between close
languages (Spanish and Portuguese); loadtest/language_id.py measures both sides."""
MIN_LETTERS = 3
"""Fewer letters than this is no evidence at all (a lone "OK", digits, punctuation)."""


class LanguageIdentifier:
    """``identify(text, candidates)``: the ISO-639-1 code of the text's language, or None
    when unsure. The text is weighed against all the model's languages; candidates (the
    client's ``languages``) restrict the answer, not the evidence: English text with
    candidates es and pt is None, not the likelier of the two. CPU work of well under a
    millisecond per sentence."""

    def __init__(self, languages: Iterable[str] = TRANSCRIPTION_LANGUAGES,
                 min_relative_distance: float = MIN_RELATIVE_DISTANCE) -> None:
        self.languages = tuple(languages)
        self.min_relative_distance = min_relative_distance

    def identify(self, text: str, candidates: Iterable[str] = ()) -> str | None:
        if sum(char.isalpha() for char in text) < MIN_LETTERS:
            return None
        language = self._detector.detect_language_of(text)
        if language is None:
            return None
        code = language.iso_code_639_1.name.lower()
        allowed = frozenset(candidates)
        return code if not allowed or code in allowed else None

    @classmethod
    def loaded(cls) -> LanguageIdentifier:
        """One whose models are in memory (~200 MB for six languages, under a second), so
        a client's first request doesn't wait for them."""
        identifier = cls()
        _ = identifier._detector
        return identifier

    @functools.cached_property
    def _detector(self) -> LanguageDetector:
        # High accuracy mode (n-grams up to five letters): the low one saves ~180 MB but
        # answered wrong where this one answered nothing (loadtest/language_id.py).
        codes = [getattr(IsoCode639_1, code.upper()) for code in self.languages]
        return (LanguageDetectorBuilder.from_iso_codes_639_1(*codes)
                .with_minimum_relative_distance(self.min_relative_distance)
                .with_preloaded_language_models()
                .build())
