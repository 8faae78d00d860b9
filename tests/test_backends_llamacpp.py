"""llama.cpp on a tiny GGUF written here with the `gguf` package: the in-process `llama-cpp-python`
backend, and the OpenAI-compatible HTTP backend against a real llama.cpp server
(`python -m llama_cpp.server`): streaming, stop sequences and cancellation."""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from graph.backends import create_backend
from graph.backends.llm.http_servers import OpenAIBackend
from graph.backends.llm.llamacpp_python import LlamaCppPythonLLM
from graph.voice.types import LLMRequest, StageError
from tests.conftest import free_port
from tests.tiny_models import build_tiny_gguf

GREEDY = dict(temperature=0.0)


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


async def collect(backend, request: LLMRequest) -> list[str]:
    return [token async for token in backend.stream(request)]


def stop_string_from(text: str) -> str:
    """A stop sequence that first occurs strictly inside `text`, so stopping there is observable."""
    for start in range(2, len(text) - 2):
        candidate = text[start : start + 2]
        if candidate.strip() and text.find(candidate) == start:
            return candidate
    raise AssertionError(f"no usable stop string in {text!r}")


# ----------------------------------------------------------------------------- in process


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def local_llm(gguf_path):
    backend = create_backend("llm", {"backend": "llama-cpp-python", "model_path": str(gguf_path), "n_ctx": 512})
    await backend.warmup()
    yield backend
    await backend.aclose()


@pytest.mark.asyncio(loop_scope="module")
async def test_in_process_streams_tokens_deterministically(local_llm):
    assert isinstance(local_llm, LlamaCppPythonLLM)
    assert local_llm.describe()["loaded"] is True and local_llm.describe()["load_s"] >= 0
    request = LLMRequest(prompt="hello miku", max_tokens=24, **GREEDY)
    first = await collect(local_llm, request)
    assert len(first) > 3  # streamed piece by piece
    assert len(first) <= 24
    assert first == await collect(local_llm, request)  # greedy: same model, same tokens


@pytest.mark.asyncio(loop_scope="module")
async def test_in_process_stop_sequence_ends_the_text_before_it(local_llm):
    full = "".join(await collect(local_llm, LLMRequest(prompt="the song", max_tokens=32, **GREEDY)))
    stop = stop_string_from(full)
    stopped = "".join(await collect(local_llm, LLMRequest(prompt="the song", max_tokens=32, stop=(stop,), **GREEDY)))
    assert stopped == full[: full.find(stop)]


@pytest.mark.asyncio(loop_scope="module")
async def test_in_process_cancel_stops_generation(local_llm):
    before = local_llm.describe()["interrupted"]
    stream = local_llm.stream(LLMRequest(prompt="hello", max_tokens=400, **GREEDY))
    await stream.__anext__()
    await stream.aclose()
    assert local_llm.describe()["interrupted"] == before + 1
    assert await collect(local_llm, LLMRequest(prompt="again", max_tokens=4, **GREEDY))


@pytest.mark.asyncio(loop_scope="module")
async def test_in_process_completions_mode(gguf_path):
    backend = LlamaCppPythonLLM(model_path=str(gguf_path), mode="completions", n_ctx=512)
    tokens = await collect(backend, LLMRequest(prompt="hello", system="You are Miku.", max_tokens=12, **GREEDY))
    assert tokens and "\nUser:" not in "".join(tokens)
    await backend.aclose()


def test_missing_or_non_gguf_model_fails_at_startup(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_path not found"):
        LlamaCppPythonLLM(model_path=str(tmp_path / "none.gguf"))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="not a GGUF file"):
        LlamaCppPythonLLM(model_path=str(fake))


# ----------------------------------------------------------------------------- llama.cpp server


class LlamaServer:
    def __init__(self, model: Path, log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        self.log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", "2048", "--seed", "0"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, attempts: int = 1200) -> None:  # bounded, not tight: a loaded machine starts it slowly
        async with aiohttp.ClientSession() as session:
            for _ in range(attempts):
                if self.process.poll() is not None:
                    raise RuntimeError(f"llama.cpp server exited: {self.log_path.read_text()[-2000:]}")
                try:
                    async with session.get(f"{self.url}/v1/models") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("llama.cpp server did not start")

    def generated_run_counts(self) -> list[int]:
        """Tokens generated per *finished* completion, from llama.cpp's own perf report."""
        self.log.flush()
        return [int(n) for n in re.findall(r"eval time =.*?/\s*(\d+) runs", self.log_path.read_text())]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def llama_server(gguf_path, tmp_path_factory):
    server = LlamaServer(gguf_path, tmp_path_factory.mktemp("llama-server") / "server.log")
    try:
        await server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("mode", ["chat", "completions"])
async def test_openai_backend_streams_from_a_real_llama_cpp_server(llama_server, mode):
    backend = OpenAIBackend(url=llama_server.url, mode=mode)
    try:
        request = LLMRequest(prompt="hello miku", max_tokens=20, **GREEDY)
        tokens = await collect(backend, request)
        assert len(tokens) > 3
        assert tokens == await collect(backend, request)
    finally:
        await backend.aclose()


@pytest.mark.asyncio(loop_scope="module")
async def test_openai_backend_stop_sequence_on_the_server(llama_server):
    backend = OpenAIBackend(url=llama_server.url)
    try:
        full = "".join(await collect(backend, LLMRequest(prompt="the song", max_tokens=32, **GREEDY)))
        stop = stop_string_from(full)
        stopped = "".join(await collect(backend, LLMRequest(prompt="the song", max_tokens=32, stop=(stop,), **GREEDY)))
        assert stopped == full[: full.find(stop)]
    finally:
        await backend.aclose()


async def cancel_then_ask_again(server: LlamaServer) -> list[int] | None:
    """Close a long stream after three tokens, then send the next request.

    Returns the token counts of the server's finished completions, or None when llama-cpp-python's
    server wedged: now and then it never notices the disconnect (no "Disconnected" line in its log) and
    keeps its model lock, so the next request is never answered. Our client has closed the connection
    either way; a client that did not close would show up as a finished 1800-token completion instead.
    """
    backend = OpenAIBackend(url=server.url)
    try:
        stream = backend.stream(LLMRequest(prompt="hello", max_tokens=1800, **GREEDY))
        for _ in range(3):
            await stream.__anext__()
        await stream.aclose()  # closes the HTTP connection
        # Give the server a moment to see the disconnect before the next request races its cleanup.
        await asyncio.sleep(1.0)
        # The server runs one completion at a time: once the next request is answered, the
        # cancelled one has either finished all 1800 tokens or been stopped.
        try:
            async with asyncio.timeout(60):
                assert await collect(backend, LLMRequest(prompt="next", max_tokens=5, **GREEDY))
        except TimeoutError:
            return None
        return server.generated_run_counts()
    finally:
        await backend.aclose()


@pytest.mark.asyncio(loop_scope="module")
async def test_cancelling_the_stream_stops_generation_on_the_server(llama_server, gguf_path, tmp_path_factory):
    counts = await cancel_then_ask_again(llama_server)
    for _ in range(2):  # a wedged server (see cancel_then_ask_again) is replaced and the scenario run again
        if counts is not None:
            break
        server = LlamaServer(gguf_path, tmp_path_factory.mktemp("llama-server-retry") / "server.log")
        try:
            await server.wait_ready()
            counts = await cancel_then_ask_again(server)
        finally:
            server.stop()
    assert counts is not None, "llama-cpp-python's server wedged after a cancelled stream in all three attempts"
    assert counts  # finished completions are reported (the next one at least)
    assert max(counts) < 100, f"the server kept generating after the client left: {counts}"


@pytest.mark.asyncio(loop_scope="module")
async def test_a_dead_server_is_a_stage_error_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    backend = OpenAIBackend(url=url)
    with pytest.raises(StageError, match=re.escape(url)):
        await collect(backend, LLMRequest(prompt="hi"))
    await backend.aclose()
