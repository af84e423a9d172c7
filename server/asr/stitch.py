"""Stitching: per-segment texts and offsets -> one transcript."""

from __future__ import annotations

from collections.abc import Sequence

UNSPACED_LANGUAGES = frozenset({"ja", "zh"})
"""Scripts written without spaces between words: pieces join directly."""


def join_texts(texts: Sequence[str], language: str | None) -> str:
    pieces = [text.strip() for text in texts if text.strip()]
    separator = "" if language in UNSPACED_LANGUAGES else " "
    return separator.join(pieces)
