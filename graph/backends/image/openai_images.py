"""`openai-images`: `POST {url}/v1/images/generations` with `response_format: b64_json`, the OpenAI images
API that LocalAI, stable-diffusion.cpp's server and others serve.

The API has no progress and, in OpenAI's own version, no seed: the seed is sent as an extra field
(local servers honour it) and reported as sent. A 400 whose error names a content policy or safety
system is the backend's safety filter refusing, said as such.
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from dataclasses import dataclass

from graph.backends.http import http_url
from graph.backends.image.base import (
    GeneratedImage,
    ImageGenBackend,
    ImageProgress,
    ImageRequest,
    MediaErrorKind,
    checked_output_off_loop,
)
from graph.backends.image.http import HTTPFailure, MediaHTTP

SAFETY_MARKERS = ("content_policy", "safety", "moderation", "nsfw", "content policy")


def is_safety_refusal(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in SAFETY_MARKERS)


@dataclass(frozen=True, kw_only=True)
class OpenAIImagesOptions:
    url: str
    model: str = "stable-diffusion"
    api_key: str | None = None
    timeout_s: float = 300.0
    connect_timeout_s: float = 5.0
    send_seed: bool = True
    send_steps: bool = True
    unload_path: str | None = None  # e.g. llama-swap's "/unload": POSTed when a voice session needs the card


class OpenAIImagesBackend(ImageGenBackend):
    name = "openai-images"

    def __init__(self, **options):
        self.options = OpenAIImagesOptions(**options)
        self.url = http_url(self.options.url, "openai-images")
        headers = {"Authorization": f"Bearer {self.options.api_key}"} if self.options.api_key else {}
        self.http = MediaHTTP("image", self.label, self.url, self.options.timeout_s, self.options.connect_timeout_s, headers)

    @property
    def label(self) -> str:
        return f"openai-images {self.url}"

    def describe(self) -> dict:
        return {"backend": self.name, "url": self.url, "model": self.options.model}

    async def generate(self, request: ImageRequest) -> AsyncIterator[ImageProgress | GeneratedImage]:
        yield ImageProgress(f"drawing with {self.options.model}...", None)
        body = {"model": self.options.model, "prompt": request.prompt, "n": 1,
                "size": f"{request.width}x{request.height}", "response_format": "b64_json"}
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        if self.options.send_seed:
            body["seed"] = request.seed
        if self.options.send_steps:
            body["steps"] = request.steps
        try:
            answer = await self.http.request("POST", "/v1/images/generations", json_body=body)
        except HTTPFailure as failure:
            if failure.status == 400 and is_safety_refusal(failure.text):
                raise self.http.error(f"{self.label} refused the prompt (its safety filter): {failure.text[:200]}",
                                      MediaErrorKind.REFUSED) from None
            raise self.http.error(f"{self.label} failed: {failure}") from None
        try:
            item = answer["data"][0]
            data = base64.b64decode(item["b64_json"], validate=True)
        except (KeyError, IndexError, TypeError, binascii.Error, ValueError):
            raise self.http.error(f"{self.label} answered without a b64_json image: {str(answer)[:160]}",
                                  MediaErrorKind.BAD_OUTPUT) from None
        yield await checked_output_off_loop("image", self.label, data, request)

    async def release(self) -> str:
        if not self.options.unload_path:
            return "no unload route configured"
        await self.http.request("POST", self.options.unload_path, expect="none", timeout_s=30)
        return f"POST {self.options.unload_path}"

    async def restore(self) -> str:
        return "the server loads the model on the next request"

    async def probe(self) -> None:
        await self.http.probe("/v1/models")

    async def aclose(self) -> None:
        await self.http.aclose()


