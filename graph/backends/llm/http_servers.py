"""HTTP LLM backends: OpenAI-compatible SSE (llama-swap, llama.cpp server, vLLM...) and llama.cpp's
native `/completion`.

Both stream with aiohttp and parse with `graph.voice.llm_stream`. Every failure becomes a `StageError` that
names the backend and its URL, so the user hears *which* LLM is down. Closing the generator early
(interrupt, client gone) closes the HTTP connection, which is how llama.cpp and llama-swap learn to
stop generating.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from graph.backends.base import PROBE_TIMEOUT_S, LLMBackend
from graph.backends.http import (
    HTTPStreamClient,
    end_response,
    http_url,
    raise_for_status,
)
from graph.voice.llm_stream import LLMStreamError, LLMStreamParser, StreamFormat
from graph.voice.types import LLMRequest, StageError

log = logging.getLogger(__name__)


def _messages(request: LLMRequest) -> list[dict[str, str]]:
    messages = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend({"role": role, "content": content} for role, content in request.history)
    messages.append({"role": "user", "content": request.prompt})
    return messages


def _plain_prompt(request: LLMRequest, assistant_name: str) -> str:
    """A chat as one text prompt, for completion-style endpoints without a chat template."""
    lines = [request.system.strip()] if request.system else []
    for role, content in request.history:
        lines.append(f"{assistant_name if role == 'assistant' else 'User'}: {content}")
    lines.append(f"User: {request.prompt}")
    lines.append(f"{assistant_name}:")
    return "\n".join(lines)


class _StreamingHTTPBackend(LLMBackend):
    """Shared POST-and-parse loop; subclasses say which path, body and stream format."""

    stream_format: StreamFormat

    def __init__(
        self,
        url: str,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        api_key: str | None = None,
        assistant_name: str = "Miku",
    ):
        self.url = http_url(url, f"{self.name} LLM")
        self.http = HTTPStreamClient(timeout_s, connect_timeout_s)
        self.api_key = api_key
        self.assistant_name = assistant_name

    def describe(self) -> dict:
        return {"backend": self.name, "url": self.url}

    @property
    def label(self) -> str:
        return f"{self.name} {self.url}"

    def _endpoint(self) -> str:
        raise NotImplementedError

    def _body(self, request: LLMRequest) -> dict[str, Any]:
        raise NotImplementedError

    def _parser_format(self) -> StreamFormat:
        return self.stream_format

    async def probe(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        await self.http.probe("llm", self.label, self.url, PROBE_TIMEOUT_S, headers)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        endpoint = self._endpoint()
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        parser = LLMStreamParser(self._parser_format())
        response = await self.http.post(
            "llm", self.label, endpoint, self._body(request), headers, f"cannot reach the LLM at {endpoint}"
        )
        finished = False
        try:
            await raise_for_status(response, "llm", self.label, f" from {endpoint}")
            async for data in response.content.iter_any():
                for token in parser.feed(data):
                    yield token
                if parser.done:
                    break
            else:
                for token in parser.close():
                    yield token
            finished = True
            if not parser.done:
                raise StageError("llm", self.label, f"the stream from {endpoint} ended early ({'; '.join(parser.problems[-2:]) or 'no end marker'})")
            if parser.problem_count:
                log.warning("LLM stream from %s had %d problem(s): %s", endpoint, parser.problem_count, parser.problems[:3])
        except LLMStreamError as error:
            raise StageError("llm", self.label, f"the LLM reported an error: {error.message}") from error
        except (aiohttp.ClientError, TimeoutError) as error:
            raise StageError("llm", self.label, f"the stream from {endpoint} broke: {error or type(error).__name__}") from error
        finally:
            end_response(response, finished)


class OpenAIBackend(_StreamingHTTPBackend):
    """`/v1/chat/completions` (mode "chat") or `/v1/completions` (mode "completions"), streamed.

    `model` routes the request through llama-swap (it picks the server by the model name); a request's
    own `model` (the brain's persona) wins over it.
    """

    name = "openai"

    def __init__(self, url: str, model: str | None = None, mode: str = "chat", **options):
        super().__init__(url, **options)
        if mode not in ("chat", "completions"):
            raise ValueError(f"openai LLM: mode must be 'chat' or 'completions', got {mode!r}")
        self.model = model
        self.mode = mode
        self.stream_format = StreamFormat.OPENAI_CHAT if mode == "chat" else StreamFormat.OPENAI_COMPLETIONS

    def describe(self) -> dict:
        return {**super().describe(), "model": self.model, "mode": self.mode}

    def _endpoint(self) -> str:
        base = self.url if self.url.endswith("/v1") else f"{self.url}/v1"
        return f"{base}/chat/completions" if self.mode == "chat" else f"{base}/completions"

    def _body(self, request: LLMRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "stream": True,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        model = request.model or self.model  # a persona's model routes by name (llama-swap)
        if model:
            body["model"] = model
        if request.stop:
            body["stop"] = list(request.stop)
        if self.mode == "chat":
            body["messages"] = _messages(request)
        else:
            body["prompt"] = _plain_prompt(request, self.assistant_name)
        return body


class LlamaCppBackend(_StreamingHTTPBackend):
    """llama.cpp server's native `POST /completion` with `stream: true`."""

    name = "llamacpp"
    stream_format = StreamFormat.LLAMACPP

    def __init__(self, url: str, cache_prompt: bool = True, **options):
        super().__init__(url, **options)
        self.cache_prompt = cache_prompt

    def _endpoint(self) -> str:
        return f"{self.url}/completion"

    def _body(self, request: LLMRequest) -> dict[str, Any]:
        return {
            "prompt": _plain_prompt(request, self.assistant_name),
            "stream": True,
            "n_predict": request.max_tokens,
            "temperature": request.temperature,
            "stop": list(request.stop) or ["\nUser:"],
            "cache_prompt": self.cache_prompt,
        }
