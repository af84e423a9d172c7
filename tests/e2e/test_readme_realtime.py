"""The README's live-captions example, run as a user would run it (its own process, the
installed SDK, ffmpeg) against the live server, with a recording of two utterances."""

from __future__ import annotations

import asyncio
import re
import sys

import openai
import pytest

from tests import audio_samples
from tests.conftest import ROOT
from tests.e2e.test_transcriptions import MODEL

pytestmark = pytest.mark.asyncio(loop_scope="session")


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Live captions"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


async def test_the_readme_s_live_captions_example_prints_each_turn(server_url, tmp_path):
    clips = [audio_samples.synthesize_speech(text, tmp_path / f"{i}.wav")
             for i, text in enumerate(["four one five nine", "two six five three"])]
    recording = tmp_path / "meeting.mp3"
    audio_samples.ffmpeg("-i", str(clips[0]), "-i", str(clips[1]), "-filter_complex",
                         "[0:a]apad=pad_dur=1.5[a];[a][1:a]concat=n=2:v=0:a=1", str(recording))
    client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    expected = [(await client.audio.transcriptions.create(
        model=MODEL, file=(clip.name, clip.read_bytes()))).text for clip in clips]
    script = readme_example().replace("http://localhost:8000/v1", f"{server_url}/v1")
    script = script.replace('"meeting.mp3"', repr(str(recording)))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().splitlines() == expected
