"""`a1111`: AUTOMATIC1111's Stable Diffusion web UI (and Forge) over its API (`--api`):
`POST /sdapi/v1/txt2img`, progress from `GET /sdapi/v1/progress` while it draws, the seed it used from the
answer's `info`, and the card freed with `POST /sdapi/v1/unload-checkpoint` / `reload-checkpoint`.

A cancelled drawing (the user's request went away) is stopped with `POST /sdapi/v1/interrupt`, so the
GPU does not keep working for nobody.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
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


@dataclass(frozen=True, kw_only=True)
class A1111Options:
    url: str
    sampler: str = "Euler a"
    timeout_s: float = 300.0
    connect_timeout_s: float = 5.0
    progress_interval_s: float = 1.0
    username: str | None = None  # --api-auth
    password: str | None = None


class A1111Backend(ImageGenBackend):
    name = "a1111"

    def __init__(self, **options):
        self.options = A1111Options(**options)
        self.url = http_url(self.options.url, "a1111")
        headers = {}
        if self.options.username:
            token = base64.b64encode(f"{self.options.username}:{self.options.password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self.http = MediaHTTP("image", self.label, self.url, self.options.timeout_s, self.options.connect_timeout_s, headers)

    @property
    def label(self) -> str:
        return f"a1111 {self.url}"

    def describe(self) -> dict:
        return {"backend": self.name, "url": self.url, "sampler": self.options.sampler}

    async def generate(self, request: ImageRequest) -> AsyncIterator[ImageProgress | GeneratedImage]:
        body = {
            "prompt": request.prompt, "negative_prompt": request.negative_prompt, "seed": request.seed,
            "steps": request.steps, "cfg_scale": request.guidance, "width": request.width, "height": request.height,
            "sampler_name": self.options.sampler, "batch_size": 1, "n_iter": 1,
            "send_images": True, "save_images": False,
        }
        call = asyncio.ensure_future(self.http.request("POST", "/sdapi/v1/txt2img", json_body=body))
        finished = False
        try:
            yield ImageProgress("starting to draw...", 0.0)
            while True:
                done, _ = await asyncio.wait({call}, timeout=self.options.progress_interval_s)
                if done:
                    break
                progress = await self._progress()
                if progress is not None:
                    yield progress
            try:
                answer = call.result()
            except HTTPFailure as failure:
                raise self.http.error(f"{self.label} failed to draw: {failure}") from None
            finished = True
        finally:
            if not finished and not call.done():
                call.cancel()
                with contextlib.suppress(Exception):  # stop the GPU work nobody waits for any more
                    await self.http.request("POST", "/sdapi/v1/interrupt", expect="none", timeout_s=5)
        try:
            data = base64.b64decode(answer["images"][0], validate=True)
        except (KeyError, IndexError, TypeError, binascii.Error, ValueError):
            raise self.http.error(f"{self.label} answered without an image: {str(answer)[:160]}",
                                  MediaErrorKind.BAD_OUTPUT) from None
        yield await checked_output_off_loop("image", self.label, data, request, seed=self._seed(answer, request.seed))

    async def _progress(self) -> ImageProgress | None:
        try:
            state = await self.http.request("GET", "/sdapi/v1/progress", params={"skip_current_image": "true"}, timeout_s=5)
        except Exception:  # noqa: BLE001 - progress is best effort; the drawing itself reports failures
            return None
        fraction = state.get("progress") if isinstance(state, dict) else None
        if not isinstance(fraction, (int, float)):
            return None
        steps = (state.get("state") or {})
        detail = f" (step {steps.get('sampling_step')}/{steps.get('sampling_steps')})" if steps.get("sampling_steps") else ""
        return ImageProgress(f"drawing... {round(100 * fraction)}%{detail}", float(min(max(fraction, 0.0), 1.0)))

    @staticmethod
    def _seed(answer: dict, sent: int) -> int:
        try:
            info = json.loads(answer.get("info") or "{}")
            seed = int(info.get("seed", sent))
            return seed if 0 <= seed < 2**32 else sent
        except (TypeError, ValueError):
            return sent

    async def release(self) -> str:
        await self.http.request("POST", "/sdapi/v1/unload-checkpoint", expect="none", timeout_s=60)
        return "POST /sdapi/v1/unload-checkpoint"

    async def restore(self) -> str:
        await self.http.request("POST", "/sdapi/v1/reload-checkpoint", expect="none", timeout_s=self.options.timeout_s)
        return "POST /sdapi/v1/reload-checkpoint"

    async def probe(self) -> None:
        await self.http.probe("/sdapi/v1/progress")

    async def aclose(self) -> None:
        await self.http.aclose()
