"""A persona's settings reach the LLM on every call: FROM model (routed by name), temperature, token
limit and ADAPTER, checked on the request body a real OpenAI-compatible server received
(tests/support/llm_server.py), and in process through llama-cpp-python with a real LoRA GGUF."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from graph.backends.llm.http_servers import OpenAIBackend
from graph.brain import Brain, BrainConfig
from graph.brain.llm import LLMCallOptions, ModelRouting, ModelRoutingError, complete_from_backend
from graph.brain.personas import PersonaError, load_personas, parse_modelfile

REPO = Path(__file__).resolve().parents[1]

PERSONA = """NAME {name}
FROM {model}
PARAMETER temperature {temperature}
PARAMETER num_predict {tokens}
PARAMETER stop "###"
{extra}
SYSTEM {system}
"""


def write_persona(directory: Path, name: str, model: str, temperature: float, tokens: int, extra: str = "",
                  system: str = "You are Miku.") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.modelfile").write_text(
        PERSONA.format(name=name, model=model, temperature=temperature, tokens=tokens, extra=extra, system=system),
        encoding="utf-8")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def dm(n: int, text: str, author: str = "u1") -> dict:
    return {"type": "message", "event_id": f"e{n}", "guild_id": None, "channel_id": "dm-1", "message_id": f"m{n}",
            "author_id": author, "author_name": "Ann", "content": text, "timestamp": 1_700_000_000.0 + n}


async def brain_on(llm_server, persona_dir: Path, routing: ModelRouting | None = None, **config) -> tuple[Brain, OpenAIBackend]:
    backend = OpenAIBackend(llm_server.url, model="server-default")
    base = BrainConfig.load(REPO / "configs" / "brain.yaml")
    cfg = dataclasses.replace(base, memory_path=":memory:", persona_dir=str(persona_dir), default_persona="alpha",
                              model_routing=routing or ModelRouting(), **config)
    brain = await Brain.create(cfg, complete=complete_from_backend(backend, routing=cfg.model_routing),
                               clock=Clock(), rng=random.Random(1))
    return brain, backend


async def test_persona_model_temperature_and_token_limit_reach_the_server(llm_server, tmp_path):
    personas = tmp_path / "personas"
    write_persona(personas, "alpha", "alpha-model:7b", 0.35, 77)
    write_persona(personas, "beta", "beta-model", 1.25, 33)
    brain, backend = await brain_on(llm_server, personas, ModelRouting(models={"beta-model": "llama-swap-beta"}))
    try:
        await brain.handle_event(dm(1, "[persona-a] hello there"))
        body = (await llm_server.settled("[persona-a]")).body
        assert (body["model"], body["temperature"], body["max_tokens"], body["stop"]) == ("alpha-model:7b", 0.35, 77, ["###"])

        result = await brain.handle_event(dm(2, "!modfile switch beta"))
        assert any(a["type"] == "switch_persona" for a in result["actions"])
        await brain.handle_event(dm(3, "[persona-b] hello again"))
        body = (await llm_server.settled("[persona-b]")).body
        # the FROM name mapped through model_routing.models: llama-swap's entry name
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("llama-swap-beta", 1.25, 33)
    finally:
        await brain.close()
        await backend.aclose()


async def test_a_from_model_the_server_lacks_falls_back_to_its_configured_model(llm_server, tmp_path, caplog):
    personas = tmp_path / "personas"
    write_persona(personas, "alpha", "missing-model", 0.5, 40)
    brain, backend = await brain_on(llm_server, personas)
    try:
        result = await brain.handle_event(dm(1, "[fallback-1] hi"))
        assert result["actions"][0]["text"]  # answered, not lost
        tried = [r.body["model"] for r in llm_server.requests if "[fallback-1]" in r.prompt]
        assert tried == ["missing-model", "server-default"]
        assert "has no model 'missing-model'" in caplog.text
        await brain.handle_event(dm(2, "[fallback-2] again"))
        second = [r.body["model"] for r in llm_server.requests if "[fallback-2]" in r.prompt]
        assert second and set(second) == {"server-default"}  # remembered: no second try of the missing model
    finally:
        await brain.close()
        await backend.aclose()


async def test_route_models_off_keeps_the_servers_model(llm_server, tmp_path):
    personas = tmp_path / "personas"
    write_persona(personas, "alpha", "alpha-model", 0.5, 40)
    brain, backend = await brain_on(llm_server, personas, ModelRouting(route_models=False))
    try:
        await brain.handle_event(dm(1, "[no-route] hi"))
        body = (await llm_server.settled("[no-route]")).body
        assert body["model"] == "server-default" and body["temperature"] == 0.5 and body["max_tokens"] == 40
    finally:
        await brain.close()
        await backend.aclose()


async def test_focused_cycle_think_plan_and_judge_calls_carry_the_persona(llm_server, tmp_path):
    """Every call of a cycle (judges, think, plan) goes out with the persona's model and settings."""
    personas = tmp_path / "personas"
    write_persona(personas, "alpha", "alpha-model", 0.6, 50)
    brain, backend = await brain_on(llm_server, personas)
    try:
        from graph.brain.events import parse_event
        from graph.brain.heartflow import ChatState
        ev = parse_event(dm(5, "[cycle] what do you think about songs?"))
        sub = brain.heartflow.subflow("dm-1", brain.clock())
        sub.state = ChatState.FOCUSED
        await brain.memory.add(brain_stored(ev))
        before = len(llm_server.requests)
        await brain._focused(ev, sub)
        records = llm_server.requests[before:]
        assert len(records) >= 3 and brain.judge.calls >= 1  # judges, think and plan
        for record in records:
            assert (record.body["model"], record.body["temperature"], record.body["max_tokens"]) == ("alpha-model", 0.6, 50)
    finally:
        await brain.close()
        await backend.aclose()


def brain_stored(ev):
    from graph.brain.memory import StoredMessage

    return StoredMessage(ev.message_id, ev.guild_id, ev.channel_id, ev.author_id, ev.author_name, False, False, ev.content, ev.timestamp)


# -- ADAPTER --------------------------------------------------------------------------------------


def test_adapter_is_validated_on_load(tmp_path):
    personas = tmp_path / "p"
    personas.mkdir()
    (personas / "style.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (personas / "fake.gguf").write_bytes(b"not a gguf")
    ok = parse_modelfile("NAME a\nFROM m\nADAPTER style.gguf\nSYSTEM s", "a.modelfile", personas)
    assert ok.adapter == str((personas / "style.gguf").resolve()) and ok.adapter_is_file
    named = parse_modelfile("NAME a\nFROM m\nADAPTER miku-style\nSYSTEM s", "a.modelfile", personas)
    assert named.adapter == "miku-style" and not named.adapter_is_file
    with pytest.raises(PersonaError, match=r"a.modelfile:3: ADAPTER file .*missing.gguf not found"):
        parse_modelfile("NAME a\nFROM m\nADAPTER missing.gguf\nSYSTEM s", "a.modelfile", personas)
    with pytest.raises(PersonaError, match="is not a GGUF file"):
        parse_modelfile("NAME a\nFROM m\nADAPTER fake.gguf\nSYSTEM s", "a.modelfile", personas)
    with pytest.raises(PersonaError, match="ADAPTER must be a .gguf file or a model-routing name"):
        parse_modelfile("NAME a\nFROM m\nADAPTER ../../etc/passwd\nSYSTEM s", "a.modelfile", personas)
    with pytest.raises(PersonaError, match="ADAPTER given twice"):
        parse_modelfile("NAME a\nFROM m\nADAPTER x\nADAPTER y\nSYSTEM s", "a.modelfile", personas)
    # load_personas resolves relative paths against the modelfile's own directory
    (personas / "a.modelfile").write_text("NAME a\nFROM m\nADAPTER style.gguf\nSYSTEM s", encoding="utf-8")
    assert load_personas(personas)["a"].adapter == str((personas / "style.gguf").resolve())


async def test_adapter_maps_to_a_model_name_on_a_remote_server(llm_server, tmp_path):
    personas = tmp_path / "personas"
    write_persona(personas, "alpha", "base-model", 0.7, 60, extra="ADAPTER miku-style")
    routing = ModelRouting(adapters={"miku-style": "base-model+miku-lora"})
    brain, backend = await brain_on(llm_server, personas, routing)
    try:
        await brain.handle_event(dm(1, "[adapter-remote] hi"))
        body = (await llm_server.settled("[adapter-remote]")).body
        assert body["model"] == "base-model+miku-lora" and body["temperature"] == 0.7
    finally:
        await brain.close()
        await backend.aclose()


def test_routing_check_names_unservable_adapters():
    routing = ModelRouting(adapters={"known": "m+known"})
    routing.check({"a": "known", "b": "/x/known.gguf"}, in_process=False)  # by name or by file stem
    with pytest.raises(ModelRoutingError, match=r"brain.model_routing.adapters\): c \(other\)"):
        routing.check({"a": "known", "c": "other"}, in_process=False)
    with pytest.raises(ModelRoutingError, match="loads ADAPTER files"):
        routing.check({"c": "other"}, in_process=True)
    with pytest.raises(ModelRoutingError, match="has no model name"):
        routing.request("p", None, LLMCallOptions(adapter="other"), in_process=False)
    # in process: the file goes as the adapter and no model name is sent
    request = routing.request("p", None, LLMCallOptions(model="m", adapter="/x/a.gguf", temperature=0.1, max_tokens=9), in_process=True)
    assert (request.model, request.adapter, request.temperature, request.max_tokens) == (None, "/x/a.gguf", 0.1, 9)
    # through a handle (backend unknown): both, so either kind of backend finds its field
    request = routing.request("p", None, LLMCallOptions(model="m", adapter="/x/known.gguf"), in_process=None)
    assert (request.model, request.adapter) == ("m+known", "/x/known.gguf")
    with pytest.raises(ValueError, match="unknown model_routing settings"):
        ModelRouting.from_mapping({"model": {}})


def build_tiny_lora(path: Path, n_embd: int = 32, rank: int = 4, seed: int = 1, scale: float = 3.0) -> Path:
    """A real llama.cpp LoRA adapter GGUF for tests/tiny_models.build_tiny_gguf's model (layer 0's
    attention): `general.type = adapter`, `adapter.type = lora`, `<tensor>.lora_a` / `.lora_b` pairs."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for name in ("attn_q", "attn_v", "attn_output"):
        writer.add_tensor(f"blk.0.{name}.weight.lora_a", (rng.standard_normal((rank, n_embd)) * scale).astype(np.float32))
        writer.add_tensor(f"blk.0.{name}.weight.lora_b", (rng.standard_normal((n_embd, rank)) * scale).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


async def test_adapter_is_loaded_as_lora_path_in_process(tmp_path):
    """llama-cpp-python in process: the persona's ADAPTER file is applied (`lora_path`), changing the
    model's output; the base persona keeps the plain model."""
    from graph.backends.llm.llamacpp_python import LlamaCppPythonLLM
    from tests.tiny_models import build_tiny_gguf

    model = build_tiny_gguf(tmp_path / "base.gguf")
    personas = tmp_path / "personas"
    personas.mkdir()
    build_tiny_lora(personas / "style.gguf", scale=1.0)
    write_persona(personas, "alpha", "ignored-in-process", 0.0, 12)
    write_persona(personas, "beta", "ignored-in-process", 0.0, 12, extra="ADAPTER style.gguf")
    backend = LlamaCppPythonLLM(str(model), mode="completions", n_ctx=256)
    base = BrainConfig.load(REPO / "configs" / "brain.yaml")
    cfg = dataclasses.replace(base, memory_path=":memory:", persona_dir=str(personas), default_persona="alpha")
    cfg.model_routing.check({p: a for p, a in {"beta": str(personas / "style.gguf")}.items()}, in_process=True)
    brain = await Brain.create(cfg, complete=complete_from_backend(backend), clock=Clock(), rng=random.Random(1))
    def mention(n: int, guild: str) -> dict:  # a new author each time: no "said elsewhere" memory either
        return {**dm(n, "hello miku", author=f"u{n}"), "guild_id": guild, "channel_id": f"{guild}-chat", "mentions_miku": True}

    try:
        await brain.handle_event({**mention(1, "g2"), "channel_id": "g2-commands", "content": "!modfile switch beta"})
        # same prompt in both servers (same system text, no history), temperature 0: only the LoRA differs
        plain = (await brain.handle_event(mention(2, "g1")))["actions"][0]["text"]
        styled = (await brain.handle_event(mention(3, "g2")))["actions"][0]["text"]
        assert backend.describe()["adapters_loaded"] == [str((personas / "style.gguf").resolve())]
        assert plain and styled and plain != styled
    finally:
        await brain.close()
        await backend.aclose()


async def test_the_textllm_handle_path_carries_model_and_adapter_and_falls_back():
    """deployments/brain/deployment.py's `complete` over the app's TextLLM handle (its backend is not
    known there): both fields go; a FROM the server lacks (as a Ray-wrapped 404) falls back."""
    from deployments.brain.deployment import _complete_via_handle

    seen = []

    class Remote:
        def remote(self, request):
            seen.append(request)

            async def tokens():
                if request.model == "missing-x":
                    raise RuntimeError("ray.exceptions.RayTaskError(StageError): HTTP 404 from http://s/v1: model not found")
                yield "ok"
            return tokens()

    class Handle:
        stream = Remote()

        def options(self, **_):
            return self

    complete = _complete_via_handle(Handle(), routing=ModelRouting(adapters={"style": "base+style"}))
    assert await complete("p", "s", LLMCallOptions(model="m", adapter="/a/style.gguf", temperature=0.3, max_tokens=7)) == "ok"
    assert (seen[-1].model, seen[-1].adapter, seen[-1].temperature, seen[-1].max_tokens) == ("base+style", "/a/style.gguf", 0.3, 7)
    assert await complete("p", "s", LLMCallOptions(model="missing-x")) == "ok"
    assert [r.model for r in seen[-2:]] == ["missing-x", None]
