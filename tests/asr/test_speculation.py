"""The CTC draft and the accepted prefix on known posteriors; the Speculator's
decisions against a scripted engine."""

from __future__ import annotations

import functools

import numpy as np

from granite_speech_server.asr.engine import SegmentRequest, SegmentResult
from granite_speech_server.asr.speculation import Speculator, accepted_prefix, ctc_draft
from granite_speech_server.asr.transcriber import Transcriber
from granite_speech_server.asr.transcript import TokenLogprob, TranscriptionOptions
from granite_speech_server.audio.features import audio_token_count
from granite_speech_server.config import Settings
from tests.asr.test_align import posteriors, spoken
from tests.asr.test_transcriber_stream import fixed_length_plan
from tools import tiny_model


def test_greedy_draft_merges_repeats_and_drops_blanks():
    frames = spoken(("", 3), ("s", 2), ("e", 2), ("", 1), ("e", 1), ("v", 1), ("e", 1),
                    ("n", 3), ("", 2), (" ", 1), ("", 2), ("o", 1), ("n", 1), ("e", 1), ("", 3))
    draft = ctc_draft(posteriors(frames, sharpness=20))
    assert draft.text == "seeven one"  # the blank between the two e frames keeps both
    assert draft.max_entropy < 0.01


def test_uncertain_frames_raise_the_entropy():
    sure = ctc_draft(posteriors(spoken(("a", 5)), sharpness=20))
    unsure = ctc_draft(posteriors(spoken(("a", 5)), sharpness=1))
    assert unsure.max_entropy > sure.max_entropy
    assert unsure.text == sure.text == "a"


def test_silence_drafts_nothing():
    assert ctc_draft(posteriors(spoken(("", 40)))).text == ""


def test_accepted_prefix_stops_at_the_first_unlikely_token():
    assert accepted_prefix([-0.1, -0.2, -3.0, -0.1], np.log(0.3)) == 2
    assert accepted_prefix([-0.1, -0.2], np.log(0.3)) == 2
    assert accepted_prefix([-5.0], np.log(0.3)) == 0
    assert accepted_prefix([], np.log(0.3)) == 0


# --- the Speculator against a scripted engine ------------------------------------------

AUDIO_TOKENS = 40
"""What the scripted engine says a segment's audio came to."""


class ScoringEngine:
    """Scores a draft with the given logprobs (``score_last``) and otherwise answers
    ``answer``; counts prompts as an engine does (the placeholder became the audio)."""

    def __init__(self, scores: list[float], answer: str = "") -> None:
        self.tokenizer = _tokenizer()
        self.scores, self.answer = scores, answer
        self.requests: list[SegmentRequest] = []

    def audio_tokens(self, num_samples: int) -> int:
        return audio_token_count(num_samples)

    async def generate(self, request: SegmentRequest, request_id: str):
        self.requests.append(request)
        prompt_tokens = request.text_tokens + AUDIO_TOKENS
        if request.score_last:
            yield SegmentResult(scored=self.scores[: request.score_last], token_ids=[0],
                                prompt_tokens=prompt_tokens, finished=True)
            return
        ids = [*self.tokenizer.encode(self.answer, add_special_tokens=False),
               self.tokenizer.eos_token_id]
        yield SegmentResult(text=self.answer, token_ids=ids,
                            logprobs=[TokenLogprob("t", -0.5) for _ in ids],
                            prompt_tokens=prompt_tokens, finished=True)


@functools.cache
def _tokenizer():
    return tiny_model.build_tokenizer()


def _draft_ids(text: str) -> list[int]:
    tokenizer = _tokenizer()
    return [*tokenizer.encode(" " + text, add_special_tokens=False), tokenizer.eos_token_id]


SAYS_ONE_TWO = spoken(("", 3), ("o", 2), ("n", 2), ("e", 2), ("", 2), (" ", 1), ("", 2),
                      ("t", 2), ("w", 2), ("o", 2), ("", 3))
SURE = posteriors(SAYS_ONE_TWO, sharpness=20)
UNSURE = posteriors(SAYS_ONE_TWO, sharpness=4)
PROMPT = [5, 6, 7, 8]


def _request(max_tokens: int = 50) -> SegmentRequest:
    return SegmentRequest(PROMPT, np.zeros(16000, np.float32), max_tokens)


def _speculator(engine) -> Speculator:
    return Speculator(engine, max_entropy=0.3, min_probability=0.3)


async def test_a_sure_draft_is_the_answer_without_the_llm():
    assert ctc_draft(SURE).max_entropy <= 0.3 < ctc_draft(UNSURE).max_entropy
    engine = ScoringEngine([])
    result = await _speculator(engine).decode(_request(), "r", SURE)
    assert engine.requests == []
    assert result.text.strip() == "one two" and result.token_ids == _draft_ids("one two")
    assert result.drafted_tokens == len(result.token_ids) and result.finished
    assert result.prompt_tokens == 0  # nothing counted it: usage falls back to the formula


async def test_a_draft_the_llm_confirms_costs_one_scoring_pass():
    draft = _draft_ids("one two")
    engine = ScoringEngine([-0.1] * len(draft))
    result = await _speculator(engine).decode(_request(), "r", UNSURE)
    [scoring] = engine.requests
    assert scoring.prompt_token_ids == PROMPT + draft
    assert (scoring.score_last, scoring.max_tokens) == (len(draft), 1)
    assert result.token_ids == draft and result.drafted_tokens == len(draft)
    assert [lp.logprob for lp in result.logprobs] == [-0.1] * len(draft)
    # The engine counted the draft as prompt; the segment's own prompt is the rest.
    assert result.prompt_tokens == len(PROMPT) - 1 + AUDIO_TOKENS


async def test_the_llm_decodes_only_after_the_prefix_it_confirms():
    draft = _draft_ids("one two")
    engine = ScoringEngine([-0.1, -5.0] + [-0.1] * (len(draft) - 2), answer="three")
    result = await _speculator(engine).decode(_request(max_tokens=50), "r", UNSURE)
    scoring, rest = engine.requests
    assert rest.prompt_token_ids == PROMPT + draft[:1] and rest.max_tokens == 49
    answer = _tokenizer().encode("three", add_special_tokens=False)
    assert result.token_ids == [draft[0], *answer, _tokenizer().eos_token_id]
    assert result.text == _tokenizer().decode(result.token_ids, skip_special_tokens=True)
    assert result.drafted_tokens == 1 and result.finished
    assert result.prompt_tokens == len(PROMPT) - 1 + AUDIO_TOKENS


async def test_a_draft_longer_than_the_budget_is_decoded_as_usual():
    engine = ScoringEngine([], answer="one")
    result = await _speculator(engine).decode(_request(max_tokens=2), "r", SURE)
    [plain] = engine.requests
    assert plain.prompt_token_ids == PROMPT and plain.score_last == 0
    assert result.text == "one" and result.drafted_tokens == 0


class FixedCtc:
    """A CTC head whose every segment says the same."""

    def __init__(self, log_probs: np.ndarray) -> None:
        self.log_probs = log_probs

    def log_posteriors(self, audios):
        return [self.log_probs for _ in audios]


async def test_usage_counts_drafted_segments_by_the_checkpoints_formula():
    """A segment drafted without the LLM has no engine count of its prompt: its audio
    tokens come from ``audio_tokens``; a scored one's from the engine."""
    settings = Settings(model="m", max_segment_seconds=10, speculative_ctc=True)
    for log_probs, audio_tokens in [(SURE, audio_token_count(10 * 16000)),
                                    (UNSURE, AUDIO_TOKENS)]:
        draft = _draft_ids("one two")
        engine = ScoringEngine([-0.1] * len(draft))
        run = Transcriber(engine, settings, planner=fixed_length_plan, ctc=FixedCtc(log_probs))
        transcript = await run.transcribe(np.zeros(20 * 16000, np.float32),
                                          TranscriptionOptions())
        assert transcript.text == "one two one two"
        assert transcript.usage.audio_tokens == 2 * audio_tokens
        assert transcript.usage.output_tokens == transcript.usage.drafted_tokens == 2 * len(draft)
