"""The `Brain` Serve deployment: a thin host for `graph.brain.Brain` (all logic lives in graph/brain).

One replica (the brain keeps chat state, the once-only decision log and the judge cache in one
process; memory is a SQLite file). It wires the real dependencies the graph logic takes injected:
- the LLM: a backend from `graph.backends` by config (`llm: {backend: openai, ...}`), tokens joined;
  without one, replies carry a prompt for the client instead of text;
- blackouts: the session controller actor (`FeatureController` in namespace `miku`) `check(feature)`;
  with no controller running every feature is allowed (logged once);
- a periodic tick (Heart Flow timers and cleanup, mood rotation, memory retention).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path
from typing import Any

import ray
from ray import serve

from graph.types import LLMRequest
from ray.serve.handle import DeploymentHandle

from graph.backends.base import create_backend
from graph.brain.brain import Brain as BrainLogic
from graph.brain.brain import BrainConfig
from graph.brain.events import ALLOW, FeatureCheck
from graph.brain.llm import complete_from_backend

log = logging.getLogger(__name__)

DEFAULT_CONFIG_FILE = Path(__file__).resolve().parent.parent / "configs" / "brain.yaml"


def _load_config(config: dict[str, Any] | str | None) -> BrainConfig:
    if config is None:
        return BrainConfig.load(DEFAULT_CONFIG_FILE)
    if isinstance(config, (str, Path)):
        return BrainConfig.load(config)
    return BrainConfig.from_mapping(config.get("brain", config))


class ControllerFeatureCheck:
    """`check_feature` backed by the session controller actor, looked up lazily by name."""

    def __init__(self, name: str, namespace: str):
        self.name = name
        self.namespace = namespace
        self._actor = None
        self._warned = False

    async def __call__(self, feature: str) -> FeatureCheck:
        if self._actor is None:
            try:
                self._actor = ray.get_actor(self.name, namespace=self.namespace)
            except ValueError:
                if not self._warned:
                    log.warning("no controller actor %s/%s: every feature is allowed", self.namespace, self.name)
                    self._warned = True
                return ALLOW
        try:
            return FeatureCheck.coerce(await self._actor.check.remote(feature))
        except ray.exceptions.RayActorError:
            self._actor = None  # restarted or gone: look it up again next time
            raise


def _complete_via_handle(handle: DeploymentHandle, max_tokens: int = 256, temperature: float = 0.8):
    async def complete(prompt: str, system: str | None) -> str:
        request = LLMRequest(prompt=prompt, system=system, max_tokens=max_tokens, temperature=temperature)
        tokens = [token async for token in handle.options(stream=True).stream.remote(request)]
        return "".join(tokens).strip()

    return complete


@serve.deployment(name="Brain", num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
class Brain:
    """`handle_event(event) -> {"actions": [...]}`, plus `current_mood`, `voice_prompt`, `snapshot`."""

    async def __init__(
        self,
        config: dict[str, Any] | str | None = None,
        llm: "dict[str, Any] | DeploymentHandle | None" = None,
        controller: dict[str, Any] | bool | None = None,
        tick_interval_s: float = 30.0,
    ):
        brain_config = _load_config(config)
        complete = None
        self._backend = None
        if isinstance(llm, DeploymentHandle):
            # share the app's TextLLM deployment (one model on the GPU) instead of a second client
            complete = _complete_via_handle(llm)
        elif llm:
            self._backend = create_backend("llm", llm)
            complete = complete_from_backend(self._backend)
        check_feature = None
        if controller is not False:
            from deployments.controller import CONTROLLER_NAME, CONTROLLER_NAMESPACE

            target = controller if isinstance(controller, dict) else {}
            check_feature = ControllerFeatureCheck(target.get("name", CONTROLLER_NAME), target.get("namespace", CONTROLLER_NAMESPACE))
        self._brain = await BrainLogic.create(brain_config, complete=complete, check_feature=check_feature, clock=time.time, rng=random.Random())
        self._tick_interval_s = tick_interval_s
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self._tick_interval_s)
            try:
                await self._brain.tick()
            except Exception:  # a failed tick must not stop the next one
                log.exception("brain tick failed")

    async def handle_event(self, event: dict[str, Any]) -> dict[str, Any]:
        return await self._brain.handle_event(event)

    async def current_mood(self, guild_id: str | None, channel_id: str | None = None) -> dict[str, Any]:
        return self._brain.current_mood(guild_id, channel_id).to_dict()

    async def voice_prompt(self, guild_id: str | None, channel_id: str | None, user_id: str, user_name: str, text: str) -> dict[str, Any]:
        prompt = await self._brain.voice_prompt(guild_id=guild_id, channel_id=channel_id, user_id=user_id, user_name=user_name, text=text)
        return prompt.to_dict()

    async def snapshot(self) -> dict[str, Any]:
        return self._brain.snapshot()

    async def check_health(self) -> None:
        if self._ticker.done():
            raise RuntimeError("the brain's tick task stopped")

    async def __del__(self) -> None:
        self._ticker.cancel()
        await self._brain.close()
        if self._backend is not None:
            await self._backend.aclose()
