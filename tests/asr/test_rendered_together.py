"""A window's segments are rendered first and released together, so they reach the
engine core in one burst (the real renderer and engine run in the e2e tests)."""

from __future__ import annotations

import asyncio

import pytest

from granite_speech_server.asr.vllm_engine import RenderedTogether

pytestmark = pytest.mark.asyncio(loop_scope="session")


class SlowRenderer:
    """vLLM's renderer as far as it matters here: one prompt at a time, a few ms each."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log
        self.lock = asyncio.Lock()

    async def render_cmpl_async(self, prompts: list[dict]) -> list[dict]:
        (prompt,) = prompts
        async with self.lock:
            await asyncio.sleep(0.005)
            if prompt["name"] == "bad":
                raise ValueError("too long")
            self.log.append(("rendered", prompt["name"]))
            return [{"type": "token", "name": prompt["name"]}]


async def submit(rendering: RenderedTogether, name: str, log: list) -> dict:
    engine_input = await rendering.render({"name": name})
    log.append(("sent", name))
    return engine_input


async def test_prompts_submitted_together_are_all_rendered_before_any_is_sent():
    log: list[tuple[str, str]] = []
    rendering = RenderedTogether(SlowRenderer(log))
    names = ["a", "b", "c"]
    inputs = await asyncio.gather(*(submit(rendering, name, log) for name in names))
    assert [engine_input["name"] for engine_input in inputs] == names
    assert log == [("rendered", n) for n in names] + [("sent", n) for n in names]


async def test_a_prompt_that_fails_to_render_fails_only_its_own_request():
    log: list[tuple[str, str]] = []
    rendering = RenderedTogether(SlowRenderer(log))
    outcomes = await asyncio.gather(*(submit(rendering, name, log) for name in ["a", "bad"]),
                                    return_exceptions=True)
    assert outcomes[0] == {"type": "token", "name": "a"}
    assert isinstance(outcomes[1], ValueError)


async def test_a_cancelled_request_does_not_hold_up_the_rest():
    log: list[tuple[str, str]] = []
    rendering = RenderedTogether(SlowRenderer(log))
    first = asyncio.create_task(submit(rendering, "a", log))
    second = asyncio.create_task(submit(rendering, "b", log))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second)["name"] == "b"
    assert ("sent", "a") not in log
    later = await submit(rendering, "c", log)  # a later turn renders on its own
    assert later["name"] == "c"
