"""The ImageGen and Vision deployments: thin hosts of graph/ logic (graph.media) and one backend each.

Placement comes from the Serve config (`gtx1660` with CUDA_VISIBLE_DEVICES, like SopranoTTS). Each replica
follows the session controller's blackout of its feature (`watch_feature`, a long poll on the
FeatureController actor) with a `GpuTenant`: the backend's model is released when a voice session starts
and restored when it ends. A request during a session is refused with the controller's message before
the backend is touched; a request while the model loads again waits and is told so.

Both stream plain dicts (JSON events) to the ingress routes: `progress`, then `image` or `answer`, or one
`error` with its `kind` (unreachable, timeout, refused, nsfw_channel, bad_request, bad_input, bad_output,
blocked, failed) and a message that names what failed.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve

from deployments.controller.actor import CONTROLLER_NAME, CONTROLLER_NAMESPACE
from deployments.voice.stages import probe_backend
from graph.backends import create_backend
from graph.backends.image.base import GeneratedImage, ImageProgress, MediaError, MediaErrorKind
from graph.brain.events import FEATURE_IMAGE_GENERATION, FEATURE_VISION
from graph.controller.features import IMAGE_MESSAGE, VISION_MESSAGE
from graph.media.drawing import DrawingConfig, DrawingPlanner, DrawOrder
from graph.media.gpu_tenant import GpuTenant, Verdict
from graph.media.vision import MediaRef, VisionConfig, VisionOrder, VisionService

log = logging.getLogger("ray.serve")

IMAGE_WAITING = "⏳ The voice session just ended: loading my drawing model again, one moment..."
VISION_WAITING = "⏳ The voice session just ended: loading my vision model again, one moment..."
WATCH_POLL_S = 30.0


def error_event(error: BaseException, stage: str, label: str) -> dict[str, Any]:
    if isinstance(error, MediaError):
        return {"type": "error", "kind": error.kind.value, "message": error.message, "backend": error.backend}
    message = f"{label} failed: {type(error).__name__}: {error}"
    return {"type": "error", "kind": MediaErrorKind.FAILED.value, "message": message, "backend": label}


class _MediaHost:
    stage = "?"
    feature = "?"
    blocked_message = "?"

    def _watch(self, controller_name: str, namespace: str):
        actor = None

        async def watch(known: bool | None) -> Verdict:
            nonlocal actor
            if actor is None:
                actor = await asyncio.to_thread(ray.get_actor, controller_name, namespace)
            try:
                result = await actor.watch_feature.remote(self.feature, known, WATCH_POLL_S)
            except Exception:
                actor = None  # look it up again (the controller restarted or was replaced)
                raise
            return Verdict(result.allowed, result.message)

        return watch

    async def _start_tenant(self, release, restore, waiting: str, controller: dict | None) -> None:
        controller = dict(controller or {})
        self.tenant = GpuTenant(self.stage, release, restore, waiting)
        watch = self._watch(controller.get("name", CONTROLLER_NAME), controller.get("namespace", CONTROLLER_NAMESPACE))
        try:  # a replica started during a session must not load its model onto the card
            first = await asyncio.wait_for(watch(None), 10)
        except Exception as error:  # noqa: BLE001 - no controller yet (it starts with the ingress): allowed
            log.info("%s: no controller answer at start (%r); loading", self.stage, error)
            first = Verdict(True)
        if first.allowed:
            await self.backend.warmup()
        else:
            self.tenant.state = self.tenant.state.RELEASED
            self.tenant.verdict = first
        self.tenant.start(watch)

    def _refusal(self) -> dict[str, Any] | None:
        if self.tenant.blocked:
            return {"type": "error", "kind": MediaErrorKind.BLOCKED.value,
                    "message": self.tenant.verdict.message or self.blocked_message, "backend": self.backend.label}
        return None

    async def status(self) -> dict[str, Any]:
        detail = {**self.backend.describe(), "gpu_tenant": self.tenant.status(), "pid": os.getpid()}
        down = await probe_backend(self.backend)
        context = ray.get_runtime_context()
        detail["resources"] = {k: v for k, v in context.get_assigned_resources().items() if k != "CPU"}
        detail["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        if down is not None:
            detail["error"] = down
        return {"stage": self.stage, "ok": down is None, "detail": detail}

    async def tenant_status(self) -> dict[str, Any]:
        return self.tenant.status()

    async def __del__(self) -> None:
        if getattr(self, "tenant", None) is not None:
            await self.tenant.aclose()
        if getattr(self, "backend", None) is not None:
            await self.backend.aclose()


@serve.deployment(name="ImageGen", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4)
class ImageGen(_MediaHost):
    stage = "image"
    feature = FEATURE_IMAGE_GENERATION
    blocked_message = IMAGE_MESSAGE

    async def __init__(self, config: dict, controller: dict | None = None):
        options = dict(config or {})
        self.limits = DrawingConfig.from_dict(options.pop("limits", None))
        self.backend = create_backend("image", options)
        self.planner = DrawingPlanner(self.limits, random.Random(), label=self.backend.label)
        self._one_at_a_time = asyncio.Lock()  # a 6 GB card draws one picture at a time
        await self._start_tenant(self.backend.release, self.backend.restore, IMAGE_WAITING, controller)

    async def generate(self, order: dict) -> AsyncIterator[dict[str, Any]]:
        refusal = self._refusal()
        if refusal is not None:
            yield refusal
            return
        try:
            request = self.planner.plan(DrawOrder(**order))
        except (MediaError, TypeError) as error:
            yield error_event(error if isinstance(error, MediaError) else MediaError(
                "image", self.backend.label, f"a bad drawing request: {error}", MediaErrorKind.BAD_REQUEST),
                "image", self.backend.label)
            return
        async for note in self.tenant.ready():
            yield {"type": "progress", "message": note, "fraction": None, "waiting_for_model": True}
        refusal = self._refusal()  # a session may have started while we waited
        if refusal is not None:
            yield refusal
            return
        if self._one_at_a_time.locked():
            yield {"type": "progress", "message": "⏳ waiting for the picture before yours...", "fraction": None}
        try:
            async with self._one_at_a_time:
                # the deadline bounds each wait for the backend, never the time spent sending our events
                deadline = asyncio.get_running_loop().time() + self.limits.timeout_s
                items = self.backend.generate(request)
                try:
                    while True:
                        try:
                            async with asyncio.timeout_at(deadline):
                                item = await anext(items)
                        except StopAsyncIteration:
                            break
                        if isinstance(item, ImageProgress):
                            yield {"type": "progress", "message": item.message, "fraction": item.fraction}
                        elif isinstance(item, GeneratedImage):
                            yield {"type": "image", "png_b64": base64.b64encode(item.png).decode(), "seed": item.seed,
                                   "prompt": item.prompt, "width": item.width, "height": item.height,
                                   "steps": request.steps, "backend": item.backend}
                finally:
                    await items.aclose()
        except TimeoutError:
            yield {"type": "error", "kind": MediaErrorKind.TIMEOUT.value, "backend": self.backend.label,
                   "message": f"{self.backend.label} timed out after {self.limits.timeout_s:g} s"}
        except Exception as error:  # noqa: BLE001 - every failure becomes one error event
            yield error_event(error, "image", self.backend.label)


@serve.deployment(name="Vision", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4)
class Vision(_MediaHost):
    stage = "vision"
    feature = FEATURE_VISION
    blocked_message = VISION_MESSAGE

    async def __init__(self, config: dict, controller: dict | None = None):
        options = dict(config or {})
        settings = {key: options.pop(key) for key in list(options) if key in VisionConfig.__dataclass_fields__}
        self.backend = create_backend("vision", options)
        self.service = VisionService(self.backend, VisionConfig.from_dict(settings))
        await self._start_tenant(self.backend.release, self.backend.restore, VISION_WAITING, controller)

    async def look(self, order: dict) -> AsyncIterator[dict[str, Any]]:
        refusal = self._refusal()
        if refusal is not None:
            yield refusal
            return
        async for note in self.tenant.ready():
            yield {"type": "progress", "message": note, "waiting_for_model": True}
        refusal = self._refusal()
        if refusal is not None:
            yield refusal
            return
        try:
            media = tuple(MediaRef(str(m.get("url", "")), str(m.get("content_type", ""))) for m in order.get("media") or ())
            history = tuple((str(role), str(text)) for role, text in order.get("history") or ())
            answer = await self.service.look(VisionOrder(media=media, system=str(order.get("system", "")),
                                                         history=history, text=str(order.get("text", ""))))
            yield {"type": "answer", "text": answer.text, "frames": answer.frames,
                   "skipped": [{"url": url, "reason": why} for url, why in answer.skipped]}
        except Exception as error:  # noqa: BLE001
            yield error_event(error, "vision", self.backend.label)

    async def __del__(self) -> None:
        if getattr(self, "service", None) is not None:
            await self.service.aclose()
        await super().__del__()
