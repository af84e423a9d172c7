"""The official Node OpenAI SDK (`openai` on npm, pinned in tests/node/package.json) against
the live server: clients aren't only Python. tests/node/transcribe.mjs makes the calls a
Node user makes, with today's list fields (keywords, languages, include,
timestamp_granularities, which the SDK sends as `name[]`) on both endpoints; this checks
what each returned."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_asyncio

from tests.conftest import ROOT
from tests.e2e.test_transcriptions import MODEL

pytestmark = pytest.mark.asyncio(loop_scope="session")

NODE_CLIENT = ROOT / "tests" / "node"


@pytest.fixture(scope="session")
def node_sdk() -> Path:
    """tests/node with its locked packages installed (npm ci: the npm registry, once)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the Node SDK test (Node 20 or newer)")
    if not (NODE_CLIENT / "node_modules" / "openai").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=NODE_CLIENT, check=True, timeout=600)
    return NODE_CLIENT


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def node_results(node_sdk, server_url, speech_files, tmp_path_factory) -> dict:
    audio = tmp_path_factory.mktemp("node") / "speech.wav"
    audio.write_bytes(speech_files["wav"])
    # The server runs in this event loop: the client must not block it.
    process = await asyncio.create_subprocess_exec(
        "node", str(node_sdk / "transcribe.mjs"), f"{server_url}/v1", str(audio), MODEL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=300)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout)


def text_tokens(result: dict) -> int:
    return result["ok"]["usage"]["input_token_details"]["text_tokens"]


async def test_keywords_reach_the_prompt_as_prompt_does(node_results):
    assert text_tokens(node_results["keywords"]) == text_tokens(node_results["prompt"])
    assert text_tokens(node_results["keywords"]) > text_tokens(node_results["plain"])
    assert node_results["keywords"]["ok"]["text"] == node_results["plain"]["ok"]["text"] != ""


async def test_languages_and_include(node_results):
    languages = node_results["languages"]["ok"]
    assert languages["languages"] == [{"code": "en"}]
    assert len(languages["logprobs"]) == languages["usage"]["output_tokens"] > 0
    assert node_results["restricted"]["ok"]["languages"] == []
    bad = node_results["badLanguage"]
    assert bad["status"] == 400 and bad["error"]["param"] == "languages"
    assert "en, fr, de, es, pt, ja" in bad["error"]["message"]


async def test_verbose_json_with_granularities_and_one_candidate_language(node_results):
    verbose = node_results["verbose"]["ok"]
    assert verbose["language"] == "german"  # one candidate acts as `language`
    assert verbose["segments"] and verbose["text"] == node_results["plain"]["ok"]["text"]


async def test_a_stream_ends_with_the_detected_languages(node_results):
    events = node_results["stream"]["ok"]
    assert events[-1]["type"] == "transcript.text.done"
    assert events[-1]["languages"] == [{"code": "en"}]
    deltas = "".join(e["delta"] for e in events if e["type"] == "transcript.text.delta")
    assert deltas == events[-1]["text"] == node_results["plain"]["ok"]["text"]


async def test_speaker_fields_are_refused_with_a_reason(node_results):
    for name, param in (("speakers", "known_speaker_names"), ("diarized", "response_format")):
        result = node_results[name]
        assert result["status"] == 400 and result["error"]["param"] == param
        assert "no speaker output" in result["error"]["message"]


async def test_translations_take_the_list_fields_too(node_results):
    plain, biased = node_results["translation"]["ok"], node_results["translationKeywords"]["ok"]
    assert text_tokens({"ok": biased}) > text_tokens({"ok": plain})
    assert len(biased["logprobs"]) == biased["usage"]["output_tokens"] > 0
    assert "languages" not in plain  # a translation's text is in the target language
