"""Adapters that turn the project's LLM backends into the brain's injected `complete(prompt, system, options)`.

The brain only needs whole answers (judges, plans, replies), so the adapter joins a backend's token
stream. Keeping this adapter here means the brain itself never depends on a concrete LLM client.
`LLMCallOptions` carries what the active persona says about the call (its `FROM` model, `ADAPTER`,
temperature, token limit and stop words) so those reach the server on every call; `ModelRouting`
maps persona model and adapter names onto the names a remote server (llama-swap) knows.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from graph.backends.base import LLMBackend
from graph.voice.types import LLMRequest, StageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LLMCallOptions:
    """Per-call settings; None fields leave the backend's own defaults."""

    model: str | None = None  # the persona's FROM: routes by name on llama-swap / OpenAI-compatible servers
    adapter: str | None = None  # the persona's ADAPTER (a LoRA GGUF path)
    temperature: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()


Complete = Callable[..., Awaitable[str]]  # complete(prompt, system, options: LLMCallOptions | None = None)


class ModelRoutingError(ValueError):
    """A persona's model or adapter cannot be served by the configured LLM."""


@dataclass(frozen=True)
class ModelRouting:
    """How persona models and adapters become request fields for one backend.

    `models` renames a FROM model (e.g. `llama3.1:8b-instruct` -> the llama-swap entry `llama3-8b`);
    `adapters` maps an adapter (its file name without `.gguf`, or its full path) to the model name a
    remote server serves the base+LoRA under. `route_models: false` keeps the backend's configured
    model for every call (a server with one model and no routing).
    """

    route_models: bool = True
    models: Mapping[str, str] = field(default_factory=dict)
    adapters: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "ModelRouting":
        data = dict(data or {})
        unknown = set(data) - {"route_models", "models", "adapters"}
        if unknown:
            raise ValueError(f"unknown model_routing settings {sorted(unknown)}; expected route_models, models, adapters")
        return cls(
            route_models=bool(data.get("route_models", True)),
            models={str(k): str(v) for k, v in (data.get("models") or {}).items()},
            adapters={str(k): str(v) for k, v in (data.get("adapters") or {}).items()},
        )

    def adapter_model(self, adapter: str) -> str | None:
        return self.adapters.get(adapter) or self.adapters.get(Path(adapter).stem)

    def request(self, prompt: str, system: str | None, options: LLMCallOptions | None, *, in_process: bool | None,
                default_max_tokens: int = 256, default_temperature: float = 0.8) -> LLMRequest:
        """The backend request for one call: persona settings in, names mapped for the backend.

        `in_process` True (llama-cpp-python): the adapter goes as a file, no model name; False (a server):
        the adapter becomes its mapped model name (an unmapped one is an error); None (a handle to a
        stage whose backend is not known here): both go, each backend reads what it understands."""
        options = options or LLMCallOptions()
        model = adapter = None
        if options.model and self.route_models and in_process is not True:
            model = self.models.get(options.model, options.model)
        if options.adapter:
            mapped = self.adapter_model(options.adapter)
            if in_process is not False and options.adapter.endswith(".gguf"):
                adapter = options.adapter  # llama-cpp-python loads it as `lora_path`
            if in_process is not True:
                if mapped is None and in_process is False:
                    raise ModelRoutingError(
                        f"adapter {options.adapter!r} has no model name for the remote LLM; add it to "
                        "brain.model_routing.adapters")
                model = mapped or model
        return LLMRequest(
            prompt=prompt,
            system=system,
            max_tokens=options.max_tokens if options.max_tokens is not None else default_max_tokens,
            temperature=options.temperature if options.temperature is not None else default_temperature,
            stop=tuple(options.stop),
            model=model,
            adapter=adapter,
        )

    def check(self, adapters: Mapping[str, str], *, in_process: bool | None) -> None:
        """Startup check of every persona adapter ({persona: adapter}); one clear error for all problems.

        In process an adapter must be a .gguf file; on a server it needs a mapped model name."""
        if in_process is None:
            return
        if in_process:
            bad = {name: a for name, a in adapters.items() if not a.endswith(".gguf")}
            what = "an in-process llama-cpp-python LLM loads ADAPTER files (.gguf), not names"
        else:
            bad = {name: a for name, a in adapters.items() if self.adapter_model(a) is None}
            what = "personas with an ADAPTER need a model name on the remote LLM (brain.model_routing.adapters)"
        if bad:
            raise ModelRoutingError(f"{what}: " + ", ".join(f"{name} ({Path(a).name})" for name, a in sorted(bad.items())))


def is_in_process(backend: Any) -> bool:
    """True for backends that load GGUF files themselves (so adapters go in as files, not names)."""
    return getattr(backend, "name", "") == "llama-cpp-python"


def complete_from_backend(backend: LLMBackend, *, max_tokens: int = 256, temperature: float = 0.8,
                          routing: ModelRouting | None = None) -> Complete:
    """`complete(prompt, system, options=None)` that streams from `backend` and returns the joined text."""
    return complete_from_stream(backend.stream, in_process=is_in_process(backend), max_tokens=max_tokens,
                                temperature=temperature, routing=routing)


def complete_from_stream(stream: Callable[[LLMRequest], AsyncIterator[str]], *, in_process: bool | None,
                         max_tokens: int = 256, temperature: float = 0.8, routing: ModelRouting | None = None) -> Complete:
    """`complete` over any token stream (a backend's, or a TextLLM handle's): persona options routed
    for the backend, and a FROM model the server does not serve falls back to the server's own model."""
    routing = routing or ModelRouting()
    unknown: set[str] = set()  # FROM names the server said it does not have: its own model is used

    async def run(request: LLMRequest) -> str:
        parts = [token async for token in stream(request)]
        return "".join(parts).strip()

    async def complete(prompt: str, system: str | None, options: LLMCallOptions | None = None) -> str:
        request = routing.request(prompt, system, options, in_process=in_process,
                                  default_max_tokens=max_tokens, default_temperature=temperature)
        from_persona = request.model is not None and not (options and options.adapter)
        if from_persona and request.model in unknown:
            request = replace(request, model=None)
        try:
            return await run(request)
        except Exception as error:
            # A persona's FROM the server does not serve (HTTP 404, or 400 naming the model): fall back to
            # the backend's configured model rather than losing every reply; an adapter's model never falls back.
            if not (from_persona and request.model and _unknown_model(error)):
                raise
            unknown.add(request.model)
            log.warning("the LLM server has no model %r (a persona's FROM): using its configured model; map it in "
                        "brain.model_routing.models or set route_models: false (%s)", request.model, error)
            return await run(replace(request, model=None))

    return complete


def _unknown_model(error: BaseException) -> bool:
    """An LLM error that says the requested model does not exist (also when wrapped, e.g. by Ray)."""
    message = (error.message if isinstance(error, StageError) else str(error)).lower()
    return "http 404" in message or ("http 400" in message and "model" in message)
