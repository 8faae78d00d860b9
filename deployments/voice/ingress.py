"""`VoiceGraph`, the ingress deployment: HTTP/WebSocket contract in front of the model stages.

It drives each utterance through `graph.voice.pipeline.UtterancePipeline`, reaching the TextLLM, SopranoTTS
and RVCVoice deployments over direct stage links found through their handles (`voice.stage_transport:
direct`, the default) or through the handles themselves (`grpc`, `actor`). Every stage call of an
utterance is tracked so an interrupt or a vanished client `.cancel()`s all of them (cancelling only the
local task would leave the LLM generating). Routes of the session controller and the brain are mounted from their own routers.
"""
# No `from __future__ import annotations` here: Serve's class-based FastAPI views need real annotations
# to recognise `WebSocket` parameters (with strings, the handshake is refused with 403).
import asyncio
import dataclasses
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Optional

import grpc
import numpy as np
import ray
from fastapi import Depends, FastAPI, Header, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle

from deployments import auth, http_guard
from deployments.admin import routes as admin_routes
from deployments.brain import routes as brain_routes
from deployments.media import routes as media_routes
from deployments.controller.actor import CONTROLLER_NAME, get_or_create_controller
from deployments.controller.routes import router as sessions_router
from deployments.controller.routes import use_controller
from deployments.heap import freeze_startup_heap
from deployments.metrics import CpuMeter, graph_metrics
from deployments.voice.voice_port import MAX_MESSAGE_BYTES, DirectVoicePort
from graph.admin.config import AdminConfig, resolve_secret
from graph.admin.latency import LatencyHistory
from graph.admin.lockout import LoginThrottle
from graph.admin.passwords import PasswordBook
from graph.admin.sessions import PanelSessions
from graph.brain.mood_profiles import load_moods, mood_voice
from graph.controller.telemetry import GpuTelemetry, VramHeadroom
from graph.listen.config import ListenConfig
from graph.listen.session import ListenSession
from graph.listen.types import STTOptions, Transcript
from graph.listen.vad import SileroModel
from graph.voice.config import VoiceConfig
from graph.voice.conversation import VoiceConversation
from graph.voice.pipeline import (
    PipelineConfig,
    StageCalls,
    StageLostNotice,
    Utterance,
    UtteranceEnded,
    UtteranceFailed,
    UtteranceMode,
    UtterancePipeline,
)
from graph.voice.protocol import (
    ProtocolError,
    SpeakRequest,
    parse_client_message,
    parse_json_message,
    parse_pitch_shift,
    sanitize_text,
    to_wire,
)
from graph.voice.stage_link import LinkLost, StageLink
from graph.voice.types import LLMRequest, StageError, StageLost, TTSOptions, VCOptions, VCResult

log = logging.getLogger("ray.serve")
SESSION_PLACES_KEPT = 256  # voice sessions whose guild/channel/user the ingress remembers

# no /docs, /redoc or /openapi.json: the contract is docs/api.md, and the graph tells nobody its routes
app = FastAPI(title="Miku voice graph", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None)
http_guard.install(app)  # bounded bodies, no NaN or deep nesting, a 422 that can always be sent
app.include_router(sessions_router)
app.include_router(brain_routes.router)
app.include_router(media_routes.router)
admin_routes.install(app)  # the admin panel under /admin, with its own login (deployments/admin/routes.py)


def _as_stage_error(error: BaseException, stage: str, backend: str) -> StageError:
    """Unwrap what a failed handle call raised into the StageError the user hears about."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, StageError):
        return StageError(cause.stage, cause.backend, cause.message)
    if isinstance(error, StageError) and hasattr(error, "stage"):
        return error
    if isinstance(error, RayActorError):
        return StageLost(stage, backend, "the stage's replica died; Serve is restarting it")
    if isinstance(error, grpc.aio.AioRpcError):  # the gRPC transport: the replica went away mid-call
        return StageLost(stage, backend, f"the call to the stage's replica broke ({error.code().name}); Serve is restarting it")
    text = str(cause or error).strip().splitlines()
    return StageError(stage, backend, text[-1] if text else type(error).__name__)


def _plain(value: Any) -> Any:
    """Dataclasses and mappings as JSON-ready dicts."""
    import dataclasses

    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return dict(value) if isinstance(value, dict) else {"value": value}


class InflightCalls:
    """Every handle response of one utterance, so all of them can be cancelled at once."""

    def __init__(self) -> None:
        self._responses: set = set()

    def add(self, response) -> None:
        self._responses.add(response)

    def discard(self, response) -> None:
        self._responses.discard(response)

    def cancel_all(self) -> int:
        cancelled = len(self._responses)
        for response in list(self._responses):
            response.cancel()
        self._responses.clear()
        return cancelled

    def __len__(self) -> int:
        return len(self._responses)


def with_transport(handle: DeploymentHandle, transport: str) -> DeploymentHandle:
    """`handle` set to call its replicas over `transport` ("grpc" or Ray's "actor" path).

    "direct" is the stage links' choice; what still goes through the handle then goes over gRPC."""
    if transport in ("grpc", "direct"):
        return handle.options(_by_reference=False, request_serialization="pickle", response_serialization="pickle")
    return handle


RECOVERY_PROBE_S = 2.0  # how long one look for a stage's replacement replica may take before we say "restarting"


class StageRecovery:
    """Stages whose replica was lost. Until a probe reaches the replacement, calls to such a stage fail at
    once with a `StageLost` saying it is restarting, instead of waiting ~10 s for Serve to notice the dead
    replica and route elsewhere; the probe runs in the background and retries until Serve has replaced it."""

    def __init__(self, probe: Callable[[str], Awaitable[Any]], names: dict[str, str], retry_s: float = 0.5):
        self._probe = probe
        self.names = names
        self.retry_s = retry_s
        self._recovering: dict[str, asyncio.Task] = {}

    def recovering(self, stage: str) -> bool:
        task = self._recovering.get(stage)
        return task is not None and not task.done()

    def lost(self, stage: str) -> None:
        if not self.recovering(stage):
            log.warning("the %s stage's replica was lost; waiting for Serve to replace it", stage)
            self._recovering[stage] = asyncio.create_task(self._recover(stage), name=f"recover-{stage}")

    async def wait_recovered(self, stage: str) -> None:
        task = self._recovering.get(stage)
        if task is not None:
            await asyncio.shield(task)

    def stages(self) -> list[str]:
        return sorted(stage for stage in self._recovering if self.recovering(stage))

    def check(self, stage: str) -> None:
        """Raise at once while `stage` is being replaced."""
        if self.recovering(stage):
            raise StageLost(stage, self.names.get(stage, stage),
                            "the stage is restarting after its replica was lost; try again in a few seconds")

    async def _recover(self, stage: str) -> None:
        while True:
            try:
                async with asyncio.timeout(RECOVERY_PROBE_S * 2):
                    await self._probe(stage)
                log.warning("the %s stage answers again", stage)
                return
            except Exception:  # noqa: BLE001 - still dead or not yet routed: look again shortly
                await asyncio.sleep(self.retry_s)

    async def aclose(self) -> None:
        for task in self._recovering.values():
            task.cancel()
        await asyncio.gather(*self._recovering.values(), return_exceptions=True)


class HandleStages:
    """StageCalls over Serve handles for one utterance, with cancellation tracking.

    With the "grpc" transport each call goes straight to the replica's gRPC server instead of through
    Ray's actor-task path: measured here it halves the cost of a hop (benchmarks/voice_latency.py).
    Our payloads (dataclasses, numpy arrays) are importable types, so plain pickle serialises them.
    """

    def __init__(self, llm: DeploymentHandle, tts: DeploymentHandle, vc: DeploymentHandle, names: dict[str, str],
                 transport: str = "grpc"):
        self.llm, self.tts, self.vc = (with_transport(handle, transport) for handle in (llm, tts, vc))
        self.names = names
        self.recovery = StageRecovery(self._probe, names)
        self._watchers: list[asyncio.Task] = []

    def start(self) -> None:
        """Watch each stage's replica (see `_BackendHost.watch`): one that dies while no call is in
        flight is marked lost at once, so the next prompt fails fast saying it restarts instead of
        waiting ~10 s in Serve's router for the replacement."""
        self._watchers = [asyncio.create_task(self._watch(stage), name=f"watch-{stage}") for stage in ("llm", "tts", "vc")]

    async def _watch(self, stage: str) -> None:
        handle = getattr(self, stage)
        while True:
            try:
                async for _ in handle.options(stream=True).watch.remote():
                    pass
                continue  # the replica ended the call after its beats: open the next one
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the replica is gone (or unreachable): a lost stage
                log.warning("the %s stage's watch call failed: %s", stage, str(error).splitlines()[0] if str(error) else type(error).__name__)
            self.recovery.lost(stage)
            try:
                await self.recovery.wait_recovered(stage)
            except Exception:  # noqa: BLE001 - the probe loop only ends by succeeding or being cancelled
                await asyncio.sleep(self.recovery.retry_s)

    async def aclose(self) -> None:
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        await self.recovery.aclose()

    async def _probe(self, stage: str) -> None:
        await getattr(self, stage).status.remote()

    def _failed(self, error: BaseException, stage: str) -> StageError:
        failure = _as_stage_error(error, stage, self.names.get(stage, stage))
        if isinstance(failure, StageLost):
            self.recovery.lost(stage)
        return failure

    def calls(self, inflight: InflightCalls) -> StageCalls:
        return StageCalls(
            llm=lambda request: self._stream(self.llm.options(stream=True).stream.remote(request), inflight, "llm"),
            tts=lambda text, options: self._stream(
                self.tts.options(stream=True).synthesize.remote(text, options), inflight, "tts"
            ),
            vc=lambda chunk, options, context: self._unary(self.vc.convert.remote(chunk, options, context), inflight, "vc"),
            llm_name=self.names.get("llm", "llm"),
            tts_name=self.names.get("tts", "tts"),
            vc_name=self.names.get("vc", "vc"),
        )

    async def _stream(self, generator, inflight: InflightCalls, stage: str) -> AsyncIterator[Any]:
        if self.recovery.recovering(stage):
            generator.cancel()
            self.recovery.check(stage)
        inflight.add(generator)
        finished = False
        try:
            async for item in generator:
                yield item
            finished = True
        except (RayTaskError, RayActorError, StageError, grpc.aio.AioRpcError) as error:
            finished = True
            raise self._failed(error, stage) from None
        finally:
            if not finished:
                generator.cancel()
            inflight.discard(generator)

    async def _unary(self, response, inflight: InflightCalls, stage: str) -> VCResult:
        if self.recovery.recovering(stage):
            response.cancel()
            self.recovery.check(stage)
        inflight.add(response)
        try:
            return await response
        except asyncio.CancelledError:
            response.cancel()
            raise
        except (RayTaskError, RayActorError, StageError, grpc.aio.AioRpcError) as error:
            raise self._failed(error, stage) from None
        finally:
            inflight.discard(response)


class LinkStages:
    """StageCalls over direct stage links (graph.voice.stage_link): the voice path's data plane.

    Serve's router picks the replica once, when `link_endpoint()` is called through the handle; the
    ingress then keeps one WebSocket per stage open to it. A link that breaks (the replica died or was
    replaced) fails its calls with a StageError at once and is found again through the handle on the
    next call, so Serve's restart brings the voice back by itself. The cost: Serve's router and
    autoscaler do not see these calls, so a stage with several replicas keeps each ingress replica on
    one of them; use "grpc" where a stage is scaled out and load has to spread per call.
    """

    def __init__(self, llm: DeploymentHandle, tts: DeploymentHandle, vc: DeploymentHandle, names: dict[str, str]):
        self.handles = {stage: with_transport(handle, "grpc") for stage, handle in (("llm", llm), ("tts", tts), ("vc", vc))}
        self.names = names
        self.links: dict[str, StageLink] = {}
        self._finding = {stage: asyncio.Lock() for stage in self.handles}
        self.recovery = StageRecovery(self._find, names)

    async def connect(self) -> None:
        """Open every link now, so the first utterance does not pay for it."""
        await asyncio.gather(*(self._link(stage) for stage in self.handles))

    async def aclose(self) -> None:
        await self.recovery.aclose()
        await asyncio.gather(*(link.aclose() for link in self.links.values()), return_exceptions=True)

    def calls(self, inflight: InflightCalls) -> StageCalls:
        return StageCalls(
            llm=lambda request: self._stream("llm", "stream", inflight, request),
            tts=lambda text, options: self._stream("tts", "synthesize", inflight, text, options),
            vc=lambda chunk, options, context: self._unary("vc", "convert", inflight, chunk, options, context),
            llm_name=self.names.get("llm", "llm"),
            tts_name=self.names.get("tts", "tts"),
            vc_name=self.names.get("vc", "vc"),
        )

    async def _link(self, stage: str) -> StageLink:
        """The stage's open link. Fails fast while the stage is being replaced; a link that broke while idle
        gets RECOVERY_PROBE_S to find the replacement (a redeploy) before we call the stage lost."""
        self.recovery.check(stage)
        link = self.links.get(stage)
        if link is None or not link.broken:
            return await self._find(stage)
        try:
            async with asyncio.timeout(RECOVERY_PROBE_S):
                return await self._find(stage)
        except (TimeoutError, StageError):
            self.recovery.lost(stage)
            raise StageLost(stage, self.names.get(stage, stage),
                            "the stage's replica is gone and Serve is restarting it; try again in a few seconds") from None

    async def _find(self, stage: str) -> StageLink:
        async with self._finding[stage]:
            link = self.links.get(stage)
            if link is None or link.broken:
                try:
                    endpoint = await self.handles[stage].link_endpoint.remote()
                except (RayTaskError, RayActorError, grpc.aio.AioRpcError) as error:
                    raise _as_stage_error(error, stage, self.names.get(stage, stage)) from None
                link = self.links[stage] = StageLink(endpoint)
            try:
                await link.open()
            except LinkLost as error:
                raise StageError(stage, self.names.get(stage, stage), f"cannot reach the stage's replica ({error})") from None
            return link

    def _lost(self, stage: str) -> StageError:
        self.recovery.lost(stage)
        return StageLost(stage, self.names.get(stage, stage), "the link to the stage's replica broke; Serve is restarting it")

    async def _stream(self, stage: str, method: str, inflight: InflightCalls, *args) -> AsyncIterator[Any]:
        link = await self._link(stage)
        try:
            call = await link.start(method, *args)
            inflight.add(call)
            try:
                async for item in call:
                    yield item
            finally:
                call.cancel()
                inflight.discard(call)
        except LinkLost:
            raise self._lost(stage) from None

    async def _unary(self, stage: str, method: str, inflight: InflightCalls, *args) -> Any:
        link = await self._link(stage)
        try:
            call = await link.start(method, *args)
            inflight.add(call)
            try:
                return await call.result()
            finally:
                inflight.discard(call)
        except LinkLost:
            raise self._lost(stage) from None


class TokenStreamSession:
    """State of one `/ws/stream` connection: tokens accumulate into an utterance until a flush.

    Every message goes through the protocol's bounded parser, and one utterance buffers at most
    `voice.max_stream_chars` characters: a token past that is refused with `{"error"}` and dropped on its
    own (what was accepted still plays at the flush), so no client can make the segmenter's work large.
    """

    def __init__(self, graph: "VoiceGraph", send):
        self.graph = graph
        self.send = send
        self.max_chars = graph.config.max_stream_chars
        self.tokens: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.count = 0
        self.buffered_chars = 0  # characters accepted into the current utterance

    async def handle_raw(self, raw: str | bytes) -> None:
        try:
            message = parse_json_message(raw)
        except ProtocolError as error:
            await self.send({"error": f"malformed message: {error.message}"})
            return
        if message.get("flush") is True:
            if self.tokens is not None:
                self.tokens.put_nowait(None)
                self.tokens = None
            else:
                await self.send({"flushed": True, "samples": 0})
            return
        token = message.get("token")
        if not isinstance(token, str):
            await self.send({"error": "expected {\"token\": str} or {\"flush\": true}"})
            return
        try:
            pitch = parse_pitch_shift(message.get("pitch_shift"))
        except ProtocolError as error:
            await self.send({"error": error.message})
            return
        token = sanitize_text(token)
        used = self.buffered_chars if self.tokens is not None else 0
        if used + len(token) > self.max_chars:
            await self.send({"error": f"utterance too long: {used + len(token)} characters, the limit is "
                                      f"{self.max_chars}; this token was dropped, flush to speak the rest"})
            return
        if self.tokens is None:
            if self.task is not None:
                await asyncio.gather(self.task, return_exceptions=True)  # one utterance at a time, in order
            self.tokens = asyncio.Queue()
            self.count += 1
            self.buffered_chars = 0
            self.task = asyncio.create_task(self._speak(self.tokens, pitch))
        self.buffered_chars += len(token)
        self.tokens.put_nowait(token)

    async def _speak(self, tokens: asyncio.Queue, pitch: float | None) -> None:
        async def client_tokens(_request: LLMRequest) -> AsyncIterator[str]:
            # tokens that queued up while the pipeline was busy go to the segmenter as one piece: the
            # same chunks (it is split-invariant), far fewer passes over its buffer
            while (token := await tokens.get()) is not None:
                pieces, ended = [token], False
                while not tokens.empty() and not ended:
                    queued = tokens.get_nowait()
                    ended = queued is None
                    if not ended:
                        pieces.append(queued)
                yield "".join(pieces)
                if ended:
                    return

        inflight = InflightCalls()
        calls = self.graph.stages.calls(inflight)
        calls.llm = client_tokens
        calls.llm_name = "client"
        # the client sent the text itself, so a failed voice must not wait for the rest of it (text_fallback_s=0)
        pipeline = UtterancePipeline(calls, PipelineConfig(stage_timeout_s=self.graph.config.stage_timeout_s,
                                                           text_fallback_s=0))
        utterance = Utterance(f"stream-{self.count}", "", UtteranceMode.PROMPT, LLMRequest(prompt=""), TTSOptions(), VCOptions(pitch_shift=pitch))
        samples = 0
        try:
            async for event in pipeline.run(utterance):
                if isinstance(event, UtteranceFailed):
                    where = f"{event.stage} ({event.backend})" if event.backend else event.stage
                    await self.send({"error": f"{where}: {event.message}"})
                    continue
                wire = to_wire(event)
                if isinstance(wire, bytes):
                    mono = _s16_stereo_to_f32_mono(wire)
                    samples += len(mono)
                    await self.send(mono.tobytes())
            await self.send({"flushed": True, "samples": samples})
        finally:
            inflight.cancel_all()

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


def _s16_stereo_to_f32_mono(pcm: bytes) -> np.ndarray:
    frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, 2)
    return (frames[:, 0].astype(np.float32) / 32768.0).astype("<f4")


def _sender(websocket: WebSocket):
    """One send coroutine per connection: JSON for dicts, binary for audio, one message at a time."""
    lock = asyncio.Lock()

    async def send(message: bytes | dict) -> None:
        async with lock:
            if isinstance(message, bytes):
                await websocket.send_bytes(message)
            else:
                await websocket.send_json(message)

    return send


async def _starlette_messages(websocket: WebSocket) -> AsyncIterator[str | bytes]:
    """The client's messages on a Serve route, until the client goes away.

    The same bound as the direct port's `max_size`: a message over MAX_MESSAGE_BYTES closes the
    connection with 1009 (message too big); smaller ones over the protocol's limit get its error event.
    """
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text") if message.get("text") is not None else message.get("bytes")
            if raw is not None and len(raw) > MAX_MESSAGE_BYTES:
                await websocket.close(code=1009, reason=f"message over {MAX_MESSAGE_BYTES} bytes")
                return
            if raw is not None:
                yield raw
    except WebSocketDisconnect:
        return


class PlaybackReport(BaseModel):
    """What a client reports about its own playback (jitter buffer), for the graph's metrics."""

    model_config = ConfigDict(allow_inf_nan=False)

    underruns: int = Field(ge=0, le=1_000_000)
    frames_played: int = Field(default=0, ge=0, le=2**53)
    buffer_ms: float | None = Field(default=None, ge=0, le=3_600_000)


@serve.deployment(name="VoiceGraph", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress(app)
class VoiceGraph:
    async def __init__(
        self,
        llm: DeploymentHandle,
        tts: DeploymentHandle,
        vc: DeploymentHandle,
        config: dict,
        controller_config: dict | None = None,
        brain: DeploymentHandle | None = None,
        image: DeploymentHandle | None = None,
        vision: DeploymentHandle | None = None,
        admin: dict | None = None,
        stt: DeploymentHandle | None = None,
        listen: dict | None = None,
    ):
        self.config = VoiceConfig.from_dict(config)
        media_routes.configure(image=image, vision=vision)  # POST /v1/images, /v1/vision (deployments/media)
        self.media = {name: handle for name, handle in (("image", image), ("vision", vision)) if handle is not None}
        admin_config = AdminConfig.from_dict(admin)
        self.listen_config = ListenConfig.from_dict(listen)
        # WS /v1/listen: VAD runs here (silero's ONNX model, tiny), speech-to-text in its own stage
        self.stt = with_transport(stt, "grpc") if stt is not None else None
        self.vad_model = await asyncio.to_thread(SileroModel)
        self.stt_failures = 0
        auth.configure(auth.resolve_token(self.config.token, self.config.token_file))
        controller_config = dict(controller_config or {})
        actor_name = controller_config.pop("actor_name", CONTROLLER_NAME)
        # a second concurrent session is admitted only if the RX 6800 keeps VRAM headroom
        headroom = VramHeadroom(**controller_config.pop("vram_headroom", {}))
        # the session controller is a detached actor: created once per cluster, found again after restarts
        self.controller = await asyncio.to_thread(
            get_or_create_controller, controller_config or None, name=actor_name, headroom=headroom
        )
        use_controller(actor_name)
        self.brain = with_transport(brain, self.config.stage_transport) if brain is not None else None
        # where each voice session talks (guild, channel, user) never changes, so one controller call
        # per session is enough; later prompts go straight to the brain (one hop less before the LLM)
        self.session_places: OrderedDict[str, tuple[int, int, int]] = OrderedDict()
        # POST /v1/events reaches the Brain of this same application, whatever the app is called
        brain_routes.configure(app_name=serve.get_replica_context().app_name)
        self.moods = load_moods()
        self.llm, self.tts, self.vc = llm, tts, vc
        self.metrics = graph_metrics()
        self.cpu = CpuMeter("ingress")  # the ingress's own process CPU (the pipeline, framing, routes)
        self.cpu.start()
        self.names = {}
        for stage, handle in (("llm", llm), ("tts", tts), ("vc", vc)):
            status = await handle.status.remote()
            backend = status.detail.get("backend", "?")
            url = status.detail.get("url")
            self.names[stage] = f"{backend} {url}" if url else backend
        self.names["stt"] = "absent"
        if self.stt is not None:
            try:  # a broken STT stage must not take the voice down: listening says so per session
                status = await asyncio.wait_for(self.stt.status.remote(), timeout=30)
                self.names["stt"] = status.detail.get("backend", "?")
            except Exception as error:  # noqa: BLE001
                log.warning("the SpeechToText stage does not answer yet: %s", error)
        if self.config.stage_transport == "direct":
            self.stages = LinkStages(llm, tts, vc, self.names)
            await self.stages.connect()
        else:
            self.stages = HandleStages(llm, tts, vc, self.names, self.config.stage_transport)
            self.stages.start()
        self.voice_port = await self._open_voice_port() if self.config.direct_voice else None
        self.latency = LatencyHistory()
        self._configure_admin(admin_config, headroom)
        freeze_startup_heap()  # last: everything set up so far lives as long as the replica

    def _configure_admin(self, config: AdminConfig, headroom: VramHeadroom) -> None:
        """The admin panel's view of this replica: its stages, latency history, controller and brain."""
        if not config.enabled:
            admin_routes.configure(None)
            return
        telemetry = GpuTelemetry()
        voice_settings = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in ("token", "token_file")}
        admin_routes.configure(admin_routes.AdminContext(
            config=config,
            passwords=PasswordBook(inline=config.users, users_file=config.users_file),
            throttle=LoginThrottle(config.lockout),
            sessions=PanelSessions(resolve_secret(config.secret_file), lifetime_s=config.session_lifetime_s,
                                   idle_s=config.session_idle_s),
            latency=self.latency,
            controller=self.controller,
            brain=self.brain,
            stage_health=self._stage_health,
            gpu_snapshot=lambda: telemetry.snapshot().as_dict(),
            vram_limits_gb=dict(headroom.limits_gb),
            voice_settings=lambda: dict(voice_settings),
        ))

    async def _stage_health(self) -> dict[str, Any]:
        """Each model stage's status and backend (what /healthz shows with the token)."""
        async def one(stage: str, handle) -> dict[str, Any]:
            try:
                status = await asyncio.wait_for(handle.status.remote(), timeout=5)
                return {"ok": status.ok, "backend": self.names.get(stage, stage), **status.detail}
            except Exception as error:
                return {"ok": False, "backend": self.names.get(stage, stage),
                        "error": _as_stage_error(error, stage, self.names[stage]).message}

        names = ("llm", "tts", "vc")
        answers = await asyncio.gather(*(one(stage, getattr(self, stage)) for stage in names))
        return dict(zip(names, answers))

    async def _open_voice_port(self) -> DirectVoicePort | None:
        cfg = self.config
        advertised = ray.util.get_node_ip_address() if cfg.direct_host in ("0.0.0.0", "::") else cfg.direct_host
        port = DirectVoicePort({"/v1/voice": self._voice_session, "/ws/stream": self._token_stream_session,
                                "/v1/listen": self._listen_session},
                               cfg.direct_host, cfg.direct_port, advertised, query_token_routes={"/ws/stream"})
        try:
            await port.start()
        except OSError as error:  # e.g. a fixed port taken by another replica: clients use Serve's routes
            log.warning("direct voice port %s:%s not opened (%s); voice stays on Serve's routes", cfg.direct_host, cfg.direct_port, error)
            return None
        return port

    async def __del__(self) -> None:
        # getattr: a constructor that failed part-way still gets here
        if getattr(self, "voice_port", None) is not None:
            await self.voice_port.aclose()
        if getattr(self, "stages", None) is not None:
            await self.stages.aclose()
        if getattr(self, "cpu", None) is not None:
            await self.cpu.stop()

    # ---- the utterance path, shared by WS /v1/voice and the CLI's handle call ----

    async def _utterance(self, request: SpeakRequest) -> Utterance:
        cfg = self.config
        llm_request = None
        mood = None
        if request.mode is UtteranceMode.PROMPT:
            llm_request = LLMRequest(prompt=request.text, system=cfg.system_prompt, max_tokens=cfg.max_tokens)
            if request.session_id and self.brain is not None:
                llm_request, mood = await self._session_prompt(request, llm_request)
        # emotion-aware speech: the session's mood (read now, per utterance, so a mood change is heard from
        # the next utterance on) sets pitch and rate unless the request names them
        voice = mood_voice(self.moods, mood, request.pitch_shift, request.speaking_rate)
        return Utterance(request.id, request.text, request.mode, llm_request,
                         TTSOptions(speed=voice.speaking_rate), VCOptions(pitch_shift=voice.pitch_shift))

    async def _session_prompt(self, request: SpeakRequest, fallback: LLMRequest) -> tuple[LLMRequest, str | None]:
        """The brain's prompt for this voice session: persona, the server's mood, the last few messages."""
        try:
            guild_id, channel_id, user_id = await self._session_place(request.session_id)
            prompt = await asyncio.wait_for(
                self.brain.voice_prompt.remote(guild_id, channel_id, user_id, "", request.text),
                timeout=self.config.session_prompt_timeout_s,
            )
        except Exception as error:  # an unknown session or a slow brain must not cost the user their answer
            log.warning("voice prompt for session %s fell back to the default: %s", request.session_id, error)
            return fallback, None
        history = tuple((str(role), str(content)) for role, content in prompt.get("history", ()))
        built = LLMRequest(
            prompt=prompt.get("user") or request.text,
            system=prompt.get("system") or fallback.system,
            history=history,
            max_tokens=min(fallback.max_tokens, int(prompt.get("max_tokens") or fallback.max_tokens)),
            temperature=float(prompt.get("temperature") or fallback.temperature),
        )
        return built, prompt.get("mood") or None

    async def _session_place(self, session_id: str) -> tuple[int, int, int]:
        place = self.session_places.get(session_id)
        if place is None:
            session = await asyncio.wait_for(
                self.controller.session.remote(session_id), timeout=self.config.session_prompt_timeout_s
            )
            place = (session.guild_id, session.text_channel_id, session.user_id)
            self.session_places[session_id] = place
            while len(self.session_places) > SESSION_PLACES_KEPT:
                self.session_places.popitem(last=False)
        self.session_places.move_to_end(session_id)
        return place

    async def _run_utterance(self, request: SpeakRequest) -> AsyncIterator:
        inflight = InflightCalls()
        pipeline = UtterancePipeline(
            self.stages.calls(inflight),
            PipelineConfig(stage_timeout_s=self.config.stage_timeout_s),
            observer=self.metrics,
        )
        try:
            async for event in pipeline.run(await self._utterance(request)):
                self._observe(event, request.mode)
                yield event
        finally:
            # interrupt, disconnect or failure: nothing of this utterance may keep running upstream
            inflight.cancel_all()

    def _observe(self, event, mode: UtteranceMode) -> None:
        if isinstance(event, StageLostNotice):
            self.metrics.stage_lost.inc(tags={"stage": event.stage})
            log.warning("utterance %s: %s", event.utterance_id, event.message)
        elif isinstance(event, UtteranceFailed):
            self.metrics.errors.inc(tags={"stage": event.stage})
        elif isinstance(event, UtteranceEnded):
            self.metrics.utterances.inc(tags={"status": event.status.value})
            if event.frames:
                self.metrics.frames_sent.inc(event.frames)
            self.metrics.record_underruns(event.underruns, "graph")
            self.latency.add(event.timings_ms, mode.value)
            ttfa = event.timings_ms.get("first_frame")
            if ttfa is not None:
                self.metrics.time_to_first_audio.observe(ttfa, tags={"mode": mode.value})

    async def speak(self, message: dict) -> AsyncIterator[bytes | dict]:
        """One utterance as the exact WebSocket messages `WS /v1/voice` would send (for the CLI)."""
        try:
            request = parse_client_message(json.dumps(message), self.config.max_prompt_chars)
        except ProtocolError as error:
            yield {"type": "error", "id": error.request_id, "stage": "graph", "message": error.message}
            return
        if not isinstance(request, SpeakRequest):
            yield {"type": "error", "id": None, "stage": "graph", "message": "speak() takes a prompt or say message"}
            return
        async for event in self._run_utterance(request):
            yield to_wire(event)

    # ---- routes ----

    async def check_health(self) -> None:
        """Serve's replica health check: runs on this replica's event loop, like every route.

        Nothing here waits on another actor, so it answers at once unless the loop itself is stuck
        (a CPU-bound call on it, a blocking call): then it times out, Serve counts the failure, and after
        a few (`health_check_period_s` / `health_check_timeout_s` in the Serve config) replaces the
        replica instead of reporting HEALTHY while every route hangs. Which stage is down is /healthz's
        job, not this: a lost stage must not get the ingress replaced.
        """
        await asyncio.sleep(0)  # one trip through the loop's ready queue: proof the loop still turns
        if self.config.direct_voice and self.voice_port is not None and not self.voice_port.serving:
            raise RuntimeError("the direct voice port stopped serving")

    async def recovering_stages(self) -> list[str]:
        """The stages whose replica was lost and is being replaced (calls to them fail fast meanwhile)."""
        return self.stages.recovery.stages()

    @app.get("/healthz")
    async def healthz(self, authorization: Optional[str] = Header(default=None)) -> JSONResponse:
        """Public: `{"status": "ok"|"degraded"}` and nothing else. With the bearer token: every stage's
        status and backend, the controller's counters (docs/api.md)."""
        async def stage_status(stage: str, handle) -> dict[str, Any]:
            try:
                status = await asyncio.wait_for(handle.status.remote(), timeout=5)
                return {"ok": status.ok, **status.detail}
            except Exception as error:
                return {"ok": False, "error": _as_stage_error(error, stage, self.names[stage]).message}

        async def controller_status() -> dict[str, Any]:
            try:
                controller = await asyncio.wait_for(self.controller.stats.remote(), timeout=5)
                return {"ok": True, **_plain(controller)}
            except Exception as error:
                return {"ok": False, "error": str(error).splitlines()[-1] if str(error) else type(error).__name__}

        async def media_status(handle) -> dict[str, Any]:
            try:
                media = await asyncio.wait_for(handle.status.remote(), timeout=5)
                return {"ok": media["ok"], "optional": True, **media["detail"]}
            except Exception as error:  # noqa: BLE001
                return {"ok": False, "optional": True, "error": f"{type(error).__name__}: {error}"[:300]}

        # Asked together: each stage may probe its backend (up to a few seconds when one is down).
        names = ("llm", "tts", "vc", "controller") + (("stt",) if self.stt is not None else ())
        answers, media = await asyncio.gather(
            asyncio.gather(stage_status("llm", self.llm), stage_status("tts", self.tts), stage_status("vc", self.vc),
                           controller_status(), *((stage_status("stt", self.stt),) if self.stt is not None else ())),
            asyncio.gather(*(media_status(handle) for handle in self.media.values())),
        )
        stages = dict(zip(names, answers))
        healthy = all(answer["ok"] for answer in answers)
        # drawing and vision are reported but do not degrade the voice graph (their servers are optional)
        stages.update(zip(self.media, media))
        body: dict[str, Any] = {"status": "ok" if healthy else "degraded"}
        if auth.token_matches(authorization):
            body["stages"] = stages
            body["recovering"] = self.stages.recovery.stages()  # lost replicas Serve is replacing
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.websocket("/v1/voice")
    async def voice(self, websocket: WebSocket) -> None:
        if not auth.websocket_authorized(websocket):
            await websocket.close(code=1008, reason="missing or wrong bearer token")
            return
        await websocket.accept()
        await self._voice_session(_sender(websocket), _starlette_messages(websocket))

    @app.websocket("/ws/stream")
    async def rvc_compatible_stream(self, websocket: WebSocket) -> None:
        """The existing Soprano->RVC API: tokens in, float32 mono 48 kHz out, `{"flush": true}` ends.

        Its clients cannot send headers, so the token may also come as `?token=...` in the URL."""
        if not auth.websocket_authorized(websocket, allow_query_token=True):
            await websocket.close(code=1008, reason="missing or wrong bearer token")
            return
        await websocket.accept()
        await self._token_stream_session(_sender(websocket), _starlette_messages(websocket))

    @app.websocket("/v1/listen")
    async def listen(self, websocket: WebSocket) -> None:
        """Speech in (docs/api.md): speakers' 16 kHz audio -> VAD, turns, barge-in, voice commands."""
        if not auth.websocket_authorized(websocket):
            await websocket.close(code=1008, reason="missing or wrong bearer token")
            return
        await websocket.accept()
        await self._listen_session(_sender(websocket), _starlette_messages(websocket))

    @app.get("/v1/voice/direct", dependencies=[Depends(auth.require_token)])
    async def direct_voice(self) -> JSONResponse:
        """Where this replica serves the voice routes itself (deployments/voice/voice_port.py)."""
        if self.voice_port is None:
            return JSONResponse({"detail": "no direct voice port on this replica; use WS /v1/voice"}, status_code=404)
        return JSONResponse({"voice": self.voice_port.url("/v1/voice"), "stream": self.voice_port.url("/ws/stream"),
                             "listen": self.voice_port.url("/v1/listen")})

    # ---- the two WebSocket sessions, whichever way the client came in ----

    async def _voice_session(self, send, messages: AsyncIterator[str | bytes]) -> None:
        conversation = VoiceConversation(
            self._run_utterance, send, self.config.max_pending_prompts, self.config.max_prompt_chars
        )
        speaker = asyncio.create_task(conversation.run())
        try:
            # read all the time (even while audio is being sent): a closed client is noticed at once
            async for raw in messages:
                await conversation.handle_raw(raw)
        finally:
            await conversation.close()
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)

    async def _listen_session(self, send, messages: AsyncIterator[str | bytes]) -> None:
        session = ListenSession(self.listen_config, self._transcribe, send, model=self.vad_model)
        try:
            async for raw in messages:
                await session.handle_raw(raw)
        finally:
            await session.close()

    async def _transcribe(self, audio: np.ndarray, options: STTOptions) -> Transcript:
        """One turn through the SpeechToText stage; any failure is a StageError the session counts."""
        if self.stt is None:
            raise StageError("stt", "absent", "this graph has no SpeechToText stage")
        response = self.stt.transcribe.remote(audio, options)
        try:
            return await response
        except asyncio.CancelledError:
            response.cancel()
            raise
        except Exception as error:
            self.stt_failures += 1
            self.metrics.errors.inc(tags={"stage": "stt"})
            raise _as_stage_error(error, "stt", self.names.get("stt", "stt")) from None

    async def _token_stream_session(self, send, messages: AsyncIterator[str | bytes]) -> None:
        stream = TokenStreamSession(self, send)
        try:
            async for raw in messages:
                await stream.handle_raw(raw)
        finally:
            await stream.close()

    @app.post("/v1/metrics/playback", dependencies=[Depends(auth.require_token)])
    async def playback_report(self, report: PlaybackReport) -> dict:
        self.metrics.record_underruns(report.underruns, "client")
        if report.buffer_ms is not None:
            self.metrics.record_client_buffer(report.buffer_ms)
        return {"ok": True}
