"""Protocol servers for the image backends, on 127.0.0.1, each on its own thread (a Serve replica in
another process can reach them).

These are NOT ComfyUI, AUTOMATIC1111 or OpenAI: neither web UI can run on this machine. Each is written
from its project's documented requests and responses and answers with real PNGs (a colour from the seed,
so a seed is visibly honoured):
- `ComfyUIProtocolServer`: ComfyUI's server.py routes `POST /prompt` ({prompt, client_id} -> {prompt_id,
  number, node_errors}), `GET /ws?clientId=` (status, execution_start, progress {value, max}, executing
  {node}, executing {node: null} at the end, execution_success, execution_error), `GET /history/{id}`
  ({id: {outputs: {node: {images: [{filename, subfolder, type}]}}, status}}), `GET /view?filename=...`,
  `POST /free` ({unload_models, free_memory}), `POST /interrupt`, `GET /system_stats`.
- `A1111ProtocolServer`: the web UI's API (`--api`, modules/api/api.py): `POST /sdapi/v1/txt2img` ->
  {images: [b64 PNG], parameters, info: JSON text with seed}, `GET /sdapi/v1/progress` -> {progress,
  eta_relative, state: {sampling_step, sampling_steps}}, `POST /sdapi/v1/interrupt`,
  `POST /sdapi/v1/unload-checkpoint`, `POST /sdapi/v1/reload-checkpoint`.
- `OpenAIImagesProtocolServer`: `POST /v1/images/generations` -> {created, data: [{b64_json}]}; a content
  policy refusal is OpenAI's 400 {error: {code: "content_policy_violation", message}}.

Markers in the prompt choose misbehaviour: [refuse] (a safety refusal), [notimage] (an answer that is not
an image), [hold] (the drawing waits until the test calls `release_hold()`), [fail] (an error), [noise]
(A1111: a picture of random pixels, as large on the wire as a real one).
Every request is recorded (`calls`: method and path) so tests can show what reached the backend.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import re
import threading
import uuid
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web
from PIL import Image


def png_for(seed: int, width: int, height: int) -> bytes:
    colour = (seed * 7919 % 256, seed * 104729 % 256, seed * 1299709 % 256)
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


@dataclass
class Call:
    method: str
    path: str
    body: object = None


class _ThreadedServer:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._hold: asyncio.Event | None = None
        self.holding = threading.Event()  # set while a [hold] drawing waits

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def start(self):
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    async def _start(self) -> None:
        self._hold = asyncio.Event()
        app = web.Application(client_max_size=64 * 2**20)
        self.routes(app)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def release_hold(self) -> None:
        self._loop.call_soon_threadsafe(self._hold.set)

    def paths(self, method: str | None = None) -> list[str]:
        return [c.path for c in self.calls if method is None or c.method == method]

    def record(self, request: web.Request, body: object = None) -> None:
        self.calls.append(Call(request.method, request.path, body))

    async def wait_hold(self) -> None:
        self.holding.set()
        await self._hold.wait()
        self._hold.clear()
        self.holding.clear()


class A1111ProtocolServer(_ThreadedServer):
    """AUTOMATIC1111's txt2img API, as documented; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.progress = {"progress": 0.0, "step": 0, "steps": 0}
        self.checkpoint_loaded = True
        self.hold_reload = False  # reload-checkpoint waits for release_hold() (a model that takes a while to load)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/sdapi/v1/txt2img", self._txt2img)
        app.router.add_get("/sdapi/v1/progress", self._progress)
        app.router.add_post("/sdapi/v1/interrupt", self._simple)
        app.router.add_post("/sdapi/v1/unload-checkpoint", self._unload)
        app.router.add_post("/sdapi/v1/reload-checkpoint", self._reload)

    async def _simple(self, request: web.Request) -> web.Response:
        self.record(request)
        return web.json_response({})

    async def _unload(self, request: web.Request) -> web.Response:
        self.record(request)
        self.checkpoint_loaded = False
        return web.json_response({})

    async def _reload(self, request: web.Request) -> web.Response:
        self.record(request)
        if self.hold_reload:
            await self.wait_hold()
        self.checkpoint_loaded = True
        return web.json_response({})

    async def _progress(self, request: web.Request) -> web.Response:
        self.record(request)
        return web.json_response({"progress": self.progress["progress"], "eta_relative": 1.0,
                                  "state": {"sampling_step": self.progress["step"], "sampling_steps": self.progress["steps"]},
                                  "current_image": None, "textinfo": None})

    async def _txt2img(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.record(request, body)
        prompt = str(body.get("prompt", ""))
        if "[fail]" in prompt:
            return web.json_response({"error": "RuntimeError", "detail": "", "body": "", "errors": "CUDA out of memory"}, status=500)
        steps = int(body.get("steps", 20))
        self.progress.update(progress=0.5, step=steps // 2, steps=steps)
        if "[hold]" in prompt:
            await self.wait_hold()
        seed = int(body.get("seed", -1))
        seed = 1234 if seed == -1 else seed
        self.progress.update(progress=0.0, step=0, steps=0)
        if "[notimage]" in prompt:
            image = base64.b64encode(b"<html>oops</html>").decode()
        elif "[noise]" in prompt:  # a picture that does not compress: a realistic size on the wire
            width, height = int(body.get("width", 512)), int(body.get("height", 512))
            out = io.BytesIO()
            Image.frombytes("RGB", (width, height), random.Random(seed).randbytes(width * height * 3)).save(out, format="PNG")
            image = base64.b64encode(out.getvalue()).decode()
        else:
            image = base64.b64encode(png_for(seed, int(body.get("width", 512)), int(body.get("height", 512)))).decode()
        return web.json_response({"images": [image], "parameters": body, "info": json.dumps({"seed": seed, "all_seeds": [seed]})})


class OpenAIImagesProtocolServer(_ThreadedServer):
    """The OpenAI images API (`/v1/images/generations`, b64_json), as documented; see the module docstring."""

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/generations", self._generate)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/unload", self._unload)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "stable-diffusion", "object": "model"}]})

    async def _unload(self, request: web.Request) -> web.Response:
        self.record(request)
        return web.Response(text="OK")

    async def _generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.record(request, body)
        prompt = str(body.get("prompt", ""))
        if "[refuse]" in prompt:
            return web.json_response({"error": {"code": "content_policy_violation", "type": "invalid_request_error",
                                                "message": "Your request was rejected as a result of our safety system."}}, status=400)
        if "[hold]" in prompt:
            await self.wait_hold()
        if "[notimage]" in prompt:
            return web.json_response({"created": 1, "data": [{"b64_json": base64.b64encode(b'{"not": "an image"}').decode()}]})
        width, height = (int(v) for v in str(body.get("size", "512x512")).split("x"))
        data = png_for(int(body.get("seed", 0)), width, height)
        return web.json_response({"created": 1, "data": [{"b64_json": base64.b64encode(data).decode()}]})


@dataclass
class _Job:
    prompt_id: str
    client_id: str
    workflow: dict
    outputs: dict = field(default_factory=dict)


class ComfyUIProtocolServer(_ThreadedServer):
    """ComfyUI's server.py API, as documented; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.history: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self.freed = 0
        self.models_loaded = False
        self.number = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/ws", self._ws)
        app.router.add_post("/prompt", self._prompt)
        app.router.add_get("/history/{prompt_id}", self._history)
        app.router.add_get("/view", self._view)
        app.router.add_post("/free", self._free)
        app.router.add_post("/interrupt", self._interrupt)
        app.router.add_get("/system_stats", self._stats)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        try:
            await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}})
            async for message in ws:
                if message.type is WSMsgType.ERROR:
                    break
        finally:
            self.sockets.pop(sid, None)
        return ws

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"system": {"comfyui_version": "protocol-server"}, "devices": []})

    async def _free(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.record(request, body)
        if body.get("unload_models") or body.get("free_memory"):
            self.freed += 1
            self.models_loaded = False
        return web.Response(status=200)

    async def _interrupt(self, request: web.Request) -> web.Response:
        self.record(request)
        return web.Response(status=200)

    async def _prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.record(request, body)
        workflow = body.get("prompt")
        if not isinstance(workflow, dict) or not workflow:
            return web.json_response({"error": {"type": "invalid_prompt", "message": "Cannot execute because a node is missing the class_type property.",
                                                "details": "", "extra_info": {}}, "node_errors": {}}, status=400)
        prompt_id = uuid.uuid4().hex
        self.number += 1
        job = _Job(prompt_id, str(body.get("client_id", "")), workflow)
        asyncio.get_running_loop().create_task(self._execute(job))
        return web.json_response({"prompt_id": prompt_id, "number": self.number, "node_errors": {}})

    async def _send(self, job: _Job, kind: str, data: dict) -> None:
        ws = self.sockets.get(job.client_id)
        if ws is not None and not ws.closed:
            await ws.send_json({"type": kind, "data": data})

    async def _execute(self, job: _Job) -> None:
        sampler = next((n for n in job.workflow.values() if n.get("class_type") == "KSampler"), {}).get("inputs", {})
        latent = next((n for n in job.workflow.values() if n.get("class_type") == "EmptyLatentImage"), {}).get("inputs", {})
        texts = [n["inputs"].get("text", "") for n in job.workflow.values() if n.get("class_type") == "CLIPTextEncode"]
        save_node = next((k for k, n in job.workflow.items() if n.get("class_type") == "SaveImage"), "9")
        await self._send(job, "execution_start", {"prompt_id": job.prompt_id})
        self.models_loaded = True
        if any("[fail]" in t for t in texts):
            await self._send(job, "execution_error", {"prompt_id": job.prompt_id, "node_id": "3", "node_type": "KSampler",
                                                      "exception_message": "Allocation on device 0 would exceed allowed memory.",
                                                      "exception_type": "torch.OutOfMemoryError"})
            return
        steps = int(sampler.get("steps", 20))
        for value in range(1, steps + 1):
            await self._send(job, "executing", {"node": "3", "prompt_id": job.prompt_id})
            await self._send(job, "progress", {"value": value, "max": steps, "prompt_id": job.prompt_id, "node": "3"})
            if value == 1 and any("[hold]" in t for t in texts):
                await self.wait_hold()
        filename = f"miku_{self.number:05d}_.png"
        if any("[notimage]" in t for t in texts):
            self.files[filename] = b"GIF89a this is not really anything"
        else:
            self.files[filename] = png_for(int(sampler.get("seed", 0)), int(latent.get("width", 512)), int(latent.get("height", 512)))
        self.history[job.prompt_id] = {
            "prompt": [self.number, job.prompt_id, job.workflow, {}, [save_node]],
            "outputs": {save_node: {"images": [{"filename": filename, "subfolder": "", "type": "output"}]}},
            "status": {"status_str": "success", "completed": True, "messages": []},
        }
        await self._send(job, "executed", {"node": save_node, "prompt_id": job.prompt_id,
                                           "output": self.history[job.prompt_id]["outputs"][save_node]})
        await self._send(job, "executing", {"node": None, "prompt_id": job.prompt_id})
        await self._send(job, "execution_success", {"prompt_id": job.prompt_id})

    async def _history(self, request: web.Request) -> web.Response:
        self.record(request)
        prompt_id = request.match_info["prompt_id"]
        return web.json_response({prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    async def _view(self, request: web.Request) -> web.Response:
        self.record(request)
        name = request.rel_url.query.get("filename", "")
        if name not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[name], content_type="image/png")


class OpenAIVisionProtocolServer(_ThreadedServer):
    """OpenAI chat completions with image parts (`image_url` data: URIs), streamed as SSE, the format
    llama.cpp's server (with an mmproj), Ollama and vLLM accept. It is not a model: it decodes every image
    it is sent (Pillow) and answers with what it measured ("2 image(s): 64x48 rgb(255,0,0); ..."), so a
    test sees exactly which frames arrived. Also `/unload` (llama-swap's) and `/v1/models`."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/unload", self._unload)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "vision", "object": "model"}]})

    async def _unload(self, request: web.Request) -> web.Response:
        self.record(request)
        return web.Response(text="OK")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.record(request, {"model": body.get("model")})
        self.received.append(body)
        user = body["messages"][-1]["content"]
        seen = []
        for part in user if isinstance(user, list) else []:
            if part.get("type") == "image_url":
                url = part["image_url"]["url"]
                header, _, payload = url.partition(",")
                image = Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")
                r, g, b = image.resize((1, 1)).getpixel((0, 0))
                seen.append(f"{image.width}x{image.height} {header.split(';')[0][5:]} rgb({r},{g},{b})")
        text = next((p["text"] for p in user if p.get("type") == "text"), "") if isinstance(user, list) else user
        if "[fail]" in text:
            return web.json_response({"error": {"message": "the mmproj is not loaded", "type": "server_error"}}, status=500)
        reply = f"Ooh! {len(seen)} image(s): " + "; ".join(seen)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in re.findall(r"\s*\S+", reply):
            chunk = {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
        await response.write_eof()
        return response


class MediaHostServer(_ThreadedServer):
    """Serves the files a test posts as 'attachments' (`files[name] = (content_type, bytes)`), plus
    `/huge` (a 50 MB body with no Content-Length) and `/redirect?to=` (a 302)."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, tuple[str, bytes]] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/files/{name}", self._file)
        app.router.add_get("/huge", self._huge)
        app.router.add_get("/redirect", self._redirect)

    async def _file(self, request: web.Request) -> web.Response:
        self.record(request)
        name = request.match_info["name"]
        if name not in self.files:
            return web.Response(status=404)
        content_type, data = self.files[name]
        return web.Response(body=data, content_type=content_type)

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        self.record(request)
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        block = b"\0" * 2**20
        try:
            for _ in range(50):
                await response.write(block)
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        await response.write_eof()
        return response

    async def _redirect(self, request: web.Request) -> web.Response:
        self.record(request)
        raise web.HTTPFound(request.rel_url.query["to"])
