"""`openai-vision`: `POST {url}/v1/chat/completions` with image parts (`image_url` with a data: URI), as
llama.cpp's server with an mmproj, Ollama and vLLM serve them. Streamed (SSE) and parsed with the
voice path's tolerant parser, so a server that cuts the stream is an error, not half an answer.
`unload_path` (llama-swap's `/unload`, for example) frees the card for a voice session.
"""
from __future__ import annotations

import base64
from asyncio import timeout as asyncio_timeout
from dataclasses import dataclass

import aiohttp

from graph.backends.http import http_url
from graph.backends.image.base import MediaError, MediaErrorKind
from graph.backends.image.http import MediaHTTP
from graph.backends.vision.base import VisionBackend, VisionRequest
from graph.voice.llm_stream import LLMStreamError, LLMStreamParser, StreamFormat


@dataclass(frozen=True, kw_only=True)
class OpenAIVisionOptions:
    url: str
    model: str | None = None
    api_key: str | None = None
    timeout_s: float = 120.0
    connect_timeout_s: float = 5.0
    unload_path: str | None = None
    unload_method: str = "POST"
    max_answer_chars: int = 4000


class OpenAIVisionBackend(VisionBackend):
    name = "openai-vision"

    def __init__(self, **options):
        self.options = OpenAIVisionOptions(**options)
        self.url = http_url(self.options.url, "openai-vision")
        self.headers = {"Authorization": f"Bearer {self.options.api_key}"} if self.options.api_key else {}
        self.http = MediaHTTP("vision", self.label, self.url, self.options.timeout_s, self.options.connect_timeout_s, self.headers)

    @property
    def label(self) -> str:
        return f"openai-vision {self.url}"

    def describe(self) -> dict:
        return {"backend": self.name, "url": self.url, "model": self.options.model}

    def body(self, request: VisionRequest) -> dict:
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages += [{"role": role, "content": content} for role, content in request.history]
        parts = [{"type": "text", "text": request.text or "What do you see?"}]
        parts += [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()}}
                  for jpeg in request.images]
        messages.append({"role": "user", "content": parts})
        body = {"messages": messages, "stream": True, "max_tokens": request.max_tokens, "temperature": request.temperature}
        if self.options.model:
            body["model"] = self.options.model
        return body

    async def answer(self, request: VisionRequest) -> str:
        endpoint = "/v1/chat/completions"
        parser = LLMStreamParser(StreamFormat.OPENAI_CHAT)
        pieces: list[str] = []
        try:
            async with asyncio_timeout(self.options.timeout_s):
                async with self.http.session().post(self.url + endpoint, json=self.body(request),
                                                    headers={**self.headers, "Accept": "text/event-stream"}) as response:
                    if response.status != 200:
                        text = (await response.text(errors="replace"))[:300].strip()
                        raise self._error(f"{self.label} failed: HTTP {response.status}: {text}")
                    async for data in response.content.iter_any():
                        pieces += parser.feed(data)
                        if parser.done or sum(map(len, pieces)) > self.options.max_answer_chars:
                            break
                    else:
                        pieces += parser.close()
        except TimeoutError:
            raise self._error(f"{self.label} timed out after {self.options.timeout_s:g} s", MediaErrorKind.TIMEOUT) from None
        except LLMStreamError as error:
            raise self._error(f"{self.label} reported an error: {error.message}") from None
        except (aiohttp.ClientConnectorError, OSError) as error:
            raise self._error(f"{self.label} is unreachable at {self.url}{endpoint}: {error}", MediaErrorKind.UNREACHABLE) from None
        except aiohttp.ClientError as error:
            raise self._error(f"{self.label}: the answer broke off: {error or type(error).__name__}") from None
        text = "".join(pieces).strip()
        if not text:
            raise self._error(f"{self.label} answered with no text", MediaErrorKind.BAD_OUTPUT)
        return text[: self.options.max_answer_chars]

    def _error(self, message: str, kind: MediaErrorKind = MediaErrorKind.FAILED) -> MediaError:
        return MediaError("vision", self.label, message, kind)

    async def release(self) -> str:
        if not self.options.unload_path:
            return "no unload route configured"
        await self.http.request(self.options.unload_method, self.options.unload_path, expect="none", timeout_s=30)
        return f"{self.options.unload_method} {self.options.unload_path}"

    async def restore(self) -> str:
        return "the server loads the model on the next request"

    async def probe(self) -> None:
        await self.http.probe("/v1/models")

    async def aclose(self) -> None:
        await self.http.aclose()



