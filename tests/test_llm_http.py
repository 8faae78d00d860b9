"""The HTTP LLM backends against a real streaming server (tests/support/llm_server.py), no Ray."""
import asyncio

import pytest

from graph.backends.llm.http_servers import LlamaCppBackend, OpenAIBackend
from graph.voice.types import LLMRequest, StageError
from tests.support.llm_server import REPLY


async def tokens_of(backend, prompt: str) -> str:
    try:
        return "".join([t async for t in backend.stream(LLMRequest(prompt=prompt, system="Be brief."))])
    finally:
        await backend.aclose()


@pytest.mark.parametrize(
    "backend, path",
    [
        (lambda url: OpenAIBackend(url, model="qwen-7b"), "/v1/chat/completions"),
        (lambda url: OpenAIBackend(url + "/v1", model="qwen-7b", mode="completions"), "/v1/completions"),
        (lambda url: LlamaCppBackend(url), "/completion"),
    ],
)
async def test_each_format_streams_the_whole_reply(llm_server, backend, path):
    text = await tokens_of(backend(llm_server.url), f"hello via {path}")
    assert text == REPLY
    record = await llm_server.settled(f"hello via {path}")
    assert record.path == path and record.finished
    if path != "/completion":
        assert record.model == "qwen-7b"  # llama-swap picks the server by this name


async def test_http_error_names_the_backend_and_url(llm_server):
    with pytest.raises(StageError) as caught:
        await tokens_of(OpenAIBackend(llm_server.url), "[fail500] now")
    assert caught.value.stage == "llm" and llm_server.url in caught.value.backend and "HTTP 500" in caught.value.message


async def test_unreachable_server_is_a_clear_error():
    with pytest.raises(StageError, match="cannot reach the LLM at http://127.0.0.1:9/v1/chat/completions"):
        await tokens_of(OpenAIBackend("http://127.0.0.1:9", connect_timeout_s=2), "hi")


async def test_closing_the_stream_early_closes_the_connection_upstream(llm_server):
    backend = OpenAIBackend(llm_server.url)
    stream = backend.stream(LLMRequest(prompt="[slow] stop me early"))
    received = [await anext(stream) for _ in range(3)]
    await stream.aclose()
    await backend.aclose()
    record = llm_server.last("[slow] stop me early")
    async with asyncio.timeout(10):
        while not record.disconnected:
            await asyncio.sleep(0.05)
    assert len(received) == 3 and not record.finished and record.tokens_sent < 200


def test_bad_configuration_fails_fast():
    with pytest.raises(ValueError, match="must start with http"):
        OpenAIBackend("127.0.0.1:8080")
    with pytest.raises(ValueError, match="mode must be"):
        OpenAIBackend("http://x", mode="edit")
