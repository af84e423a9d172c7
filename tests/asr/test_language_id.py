"""LanguageIdentifier: the transcript's language among the model's, or None when unsure."""

from __future__ import annotations

import pytest

from granite_speech_server.asr.language_id import LanguageIdentifier
from loadtest.language_id import SENTENCES, measure_text


@pytest.fixture(scope="module")
def identifier() -> LanguageIdentifier:
    return LanguageIdentifier.loaded()


@pytest.mark.parametrize("language", sorted(SENTENCES))
def test_a_sentence_s_language_is_told(identifier, language):
    assert [identifier.identify(s) for s in SENTENCES[language]] == [language] * 6


@pytest.mark.parametrize("text", ["", "OK", "12 34 56", "...", "hola"])
def test_too_little_text_is_unsure_not_a_guess(identifier, text):
    assert identifier.identify(text) is None


def test_candidates_restrict_the_answer_not_the_evidence(identifier):
    english = SENTENCES["en"][0]
    assert identifier.identify(english, ("en", "fr")) == "en"
    assert identifier.identify(english, ("es", "pt")) is None  # never the likelier wrong one
    assert identifier.identify(english, ("fr",)) is None


def test_the_benchmark_s_text_measure_counts_every_text_once():
    results = measure_text()
    assert set(results) == {"1", "2", "3", "5", "whole"}
    for rows in results.values():
        assert set(rows) == set(SENTENCES)
        assert all(sum(counts.values()) == 6 for counts in rows.values())
    assert sum(counts.get("wrong", 0) for rows in results.values() for counts in rows.values()) == 0
