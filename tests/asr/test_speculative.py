"""The CTC draft and the accepted prefix: pure logic on known posteriors."""

from __future__ import annotations

import numpy as np

from granite_speech_server.asr.speculative import accepted_prefix, ctc_draft
from tests.asr.test_align import posteriors, spoken


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
