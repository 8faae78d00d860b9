"""`llama-cpp-python` LLM backend: a GGUF model in this process through llama-cpp-python (the
`llamacpp` extra), streaming tokens.

Why: on the RX 6800 box the text LLM can live inside the TextLLM replica (HIP build of
llama-cpp-python, `n_gpu_layers: -1`) with no separate server to run; the HTTP backends remain the
choice for llama-swap / a shared llama.cpp server.

Generation runs in a worker thread (llama.cpp calls block); closing the stream (interrupt, client
gone) stops generation after the current token. One generation at a time per model: a `Llama` object
is not safe to share between threads.

A request's `adapter` (a persona's LoRA GGUF) is loaded with llama-cpp-python's `lora_path`, which
applies at load time: each adapter gets its own `Llama` (the base weights are mmap'd, so the file
pages are shared), loaded on first use and kept; `max_adapters` bounds how many stay loaded.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from graph.backends.base import LLMBackend
from graph.backends.llm.http_servers import _messages, _plain_prompt
from graph.backends.threaded import ThreadedStream
from graph.voice.types import LLMRequest, StageError

GGUF_MAGIC = b"GGUF"


def check_gguf(path: str | os.PathLike) -> Path:
    """The path if it is a GGUF file; FileNotFoundError/ValueError naming it otherwise."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"llama-cpp-python: model_path not found: {resolved}")
    with resolved.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ValueError(f"llama-cpp-python: {resolved} is not a GGUF file (no GGUF magic)")
    return resolved


class LlamaCppPythonLLM(LLMBackend):
    """Options: `model_path` (a .gguf), `mode` ("chat" uses the model's chat template, "completions"
    a plain `User:/Miku:` transcript), `n_ctx`, `n_gpu_layers` (-1 = all on the GPU), `n_threads`,
    `seed`, `top_p`, `repeat_penalty`, `chat_format` (override the GGUF's template), `max_adapters` (LoRA
    models kept loaded for requests with an `adapter`)."""

    name = "llama-cpp-python"

    def __init__(
        self,
        model_path: str,
        mode: str = "chat",
        n_ctx: int = 4096,
        n_gpu_layers: int = 0,
        n_threads: int | None = None,
        seed: int = 0,
        top_p: float = 0.95,
        repeat_penalty: float = 1.1,
        chat_format: str | None = None,
        assistant_name: str = "Miku",
        max_adapters: int = 2,
    ):
        if mode not in ("chat", "completions"):
            raise ValueError(f"llama-cpp-python: mode must be 'chat' or 'completions', got {mode!r}")
        self.model_path = check_gguf(model_path)
        self.mode = mode
        self.load_options: dict[str, Any] = {
            "n_ctx": n_ctx,
            "n_gpu_layers": n_gpu_layers,
            "seed": seed,
            "verbose": False,
        }
        if n_threads:
            self.load_options["n_threads"] = n_threads
        if chat_format:
            self.load_options["chat_format"] = chat_format
        self.sampling = {"top_p": top_p, "repeat_penalty": repeat_penalty}
        self.assistant_name = assistant_name
        self._llm: Any = None
        self._adapters: dict[str, Any] = {}  # adapter path -> Llama with that LoRA applied
        self.max_adapters = max_adapters
        self._load_lock = threading.Lock()
        self._generate_lock = asyncio.Lock()
        self.load_s: float | None = None
        self.generations = 0
        self.interrupted = 0

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.name,
            "model_path": str(self.model_path),
            "mode": self.mode,
            "n_ctx": self.load_options["n_ctx"],
            "n_gpu_layers": self.load_options["n_gpu_layers"],
            "loaded": self._llm is not None,
            "adapters_loaded": sorted(self._adapters),
            "generations": self.generations,
            "interrupted": self.interrupted,
        }
        if self.load_s is not None:
            info["load_s"] = round(self.load_s, 3)
        return info

    def _load(self, adapter: str | None = None) -> Any:
        with self._load_lock:
            if adapter is not None:
                return self._load_adapter(adapter)
            if self._llm is None:
                Llama = self._llama_class()
                started = time.monotonic()
                try:
                    self._llm = Llama(model_path=str(self.model_path), **self.load_options)
                except ValueError as exc:
                    raise ValueError(f"llama-cpp-python: cannot load {self.model_path}: {exc}") from exc
                self.load_s = time.monotonic() - started
            return self._llm

    @staticmethod
    def _llama_class() -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ImportError("llama-cpp-python backend needs the 'llamacpp' extra (llama-cpp-python)") from exc
        return Llama

    def _load_adapter(self, adapter: str) -> Any:
        """The model with the LoRA `adapter` applied (`lora_path`); the oldest loaded one goes past the bound."""
        llm = self._adapters.get(adapter)
        if llm is not None:
            return llm
        path = check_gguf(adapter)
        Llama = self._llama_class()
        try:
            llm = Llama(model_path=str(self.model_path), lora_path=str(path), **self.load_options)
        except ValueError as exc:
            raise ValueError(f"llama-cpp-python: cannot load {self.model_path} with adapter {path}: {exc}") from exc
        while len(self._adapters) >= max(1, self.max_adapters):
            old = self._adapters.pop(next(iter(self._adapters)))
            if hasattr(old, "close"):
                old.close()
        self._adapters[adapter] = llm
        return llm

    async def warmup(self) -> None:
        await asyncio.to_thread(self._load)

    def _deltas(self, request: LLMRequest) -> Iterator[str]:
        llm = self._load(request.adapter)
        common = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stop": list(request.stop) or None,
            "stream": True,
            **self.sampling,
        }
        if self.mode == "chat":
            for part in llm.create_chat_completion(messages=_messages(request), **common):
                text = part["choices"][0]["delta"].get("content")
                if text:
                    yield text
        else:
            prompt = _plain_prompt(request, self.assistant_name)
            stop = list(request.stop) + ["\nUser:"]
            for part in llm.create_completion(prompt=prompt, **{**common, "stop": stop}):
                text = part["choices"][0].get("text")
                if text:
                    yield text

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        async with self._generate_lock:
            tokens = ThreadedStream(lambda: self._deltas(request), name="llama-cpp-generate")
            try:
                async for text in tokens:
                    yield text
            except (ImportError, FileNotFoundError):
                raise
            except Exception as exc:
                raise StageError("llm", self.name, f"generation failed: {type(exc).__name__}: {exc}") from exc
            finally:
                tokens.stop()
                await asyncio.to_thread(tokens.wait_finished, 30.0)  # the Llama object is free again
                self.generations += 1
                self.interrupted += int(tokens.stopped_early)

    async def aclose(self) -> None:
        llm, self._llm = self._llm, None
        adapters, self._adapters = list(self._adapters.values()), {}
        for model in [llm, *adapters]:
            if model is not None and hasattr(model, "close"):
                model.close()
