"""`diffusers`: a Stable Diffusion pipeline in this process, from a local model directory only (the
layout `save_pretrained` writes: model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/).
Nothing is downloaded (`local_files_only`). Generation runs on a worker thread; each denoising step
reports progress, and a cancelled request stops at the next step. `release()` drops the pipeline and
empties the CUDA cache (a voice session needs the card); `restore()` loads it from disk again.
"""
from __future__ import annotations

import asyncio
import gc
import io
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from graph.backends.image.base import (
    GeneratedImage,
    ImageGenBackend,
    ImageProgress,
    ImageRequest,
    MediaError,
    MediaErrorKind,
    checked_output_off_loop,
)


class _Cancelled(Exception):
    pass


@dataclass(frozen=True, kw_only=True)
class DiffusersOptions:
    model_path: str
    device: str = "cuda"
    dtype: str = "float16"  # float32 on CPU
    scheduler: str | None = None  # keep the directory's scheduler unless named ("EulerAncestralDiscreteScheduler")
    attention_slicing: bool = True  # less VRAM on a 6 GB card
    load_on_start: bool = True


class DiffusersBackend(ImageGenBackend):
    name = "diffusers"

    def __init__(self, **options):
        self.options = DiffusersOptions(**options)
        path = Path(self.options.model_path)
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"diffusers: {path} is not a local diffusers model directory (no model_index.json)")
        self.path = path
        self._pipeline = None
        self._lock = asyncio.Lock()  # one drawing at a time on the card; loading and releasing wait too
        self.loads = 0

    @property
    def label(self) -> str:
        return f"diffusers {self.path}"

    def describe(self) -> dict:
        return {"backend": self.name, "model_path": str(self.path), "device": self.options.device,
                "loaded": self._pipeline is not None, "loads": self.loads}

    @property
    def loaded(self) -> bool:
        return self._pipeline is not None

    def _load(self):
        import torch
        from diffusers import DiffusionPipeline

        dtype = getattr(torch, self.options.dtype)
        pipeline = DiffusionPipeline.from_pretrained(str(self.path), local_files_only=True, dtype=dtype,
                                                     safety_checker=None, requires_safety_checker=False)
        if self.options.scheduler:
            import diffusers

            scheduler_class = getattr(diffusers, self.options.scheduler)
            pipeline.scheduler = scheduler_class.from_config(pipeline.scheduler.config)
        if self.options.attention_slicing and hasattr(pipeline, "enable_attention_slicing"):
            pipeline.enable_attention_slicing()
        pipeline.set_progress_bar_config(disable=True)
        self.loads += 1
        return pipeline.to(self.options.device)

    async def warmup(self) -> None:
        if self.options.load_on_start:
            await self.restore()

    async def restore(self) -> str:
        async with self._lock:
            if self._pipeline is None:
                try:
                    self._pipeline = await asyncio.to_thread(self._load)
                except Exception as error:  # noqa: BLE001 - a broken directory is the backend failing, said once
                    raise MediaError("image", self.label, f"{self.label} could not load its model: {error}") from error
        return f"loaded {self.path}"

    async def release(self) -> str:
        async with self._lock:
            pipeline, self._pipeline = self._pipeline, None
            del pipeline
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass
        return "pipeline dropped, CUDA cache emptied"

    async def generate(self, request: ImageRequest) -> AsyncIterator[ImageProgress | GeneratedImage]:
        if self._pipeline is None:
            yield ImageProgress("loading the drawing model...", None)
            await self.restore()
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def on_step(pipeline, step, timestep, callback_kwargs):
            if stop.is_set():
                raise _Cancelled()
            loop.call_soon_threadsafe(updates.put_nowait, step + 1)
            return callback_kwargs

        def run(pipeline) -> bytes:
            import torch

            generator = torch.Generator(device="cpu").manual_seed(request.seed)
            result = pipeline(prompt=request.prompt, negative_prompt=request.negative_prompt or None,
                              width=request.width, height=request.height, num_inference_steps=request.steps,
                              guidance_scale=request.guidance, generator=generator, callback_on_step_end=on_step)
            out = io.BytesIO()
            result.images[0].save(out, format="PNG")
            return out.getvalue()

        async with self._lock:
            pipeline = self._pipeline
            if pipeline is None:
                raise MediaError("image", self.label, f"{self.label}: the model was released (a voice session)",
                                 MediaErrorKind.BLOCKED)
            work = asyncio.ensure_future(asyncio.to_thread(run, pipeline))
            try:
                yield ImageProgress("drawing...", 0.0)
                while not work.done():
                    getter = asyncio.ensure_future(updates.get())
                    await asyncio.wait({work, getter}, return_when=asyncio.FIRST_COMPLETED)
                    if getter.done():
                        step = min(getter.result(), request.steps)  # some schedulers take one extra step
                        yield ImageProgress(f"drawing... step {step}/{request.steps}", step / request.steps)
                    else:
                        getter.cancel()
                try:
                    data = work.result()
                except Exception as error:  # noqa: BLE001 - the pipeline's failure, named
                    raise MediaError("image", self.label, f"{self.label} failed to draw: {error}") from error
            finally:
                if not work.done():
                    stop.set()  # the thread stops at its next step; wait so the card is free for the next one
                    await asyncio.shield(asyncio.wait({work}))
        yield await checked_output_off_loop("image", self.label, data, request)
