"""Miku's brain: the decision side of text chat, as plain Python (no Ray).

- `events`: the `POST /v1/events` contract (event models in, action dataclasses out)
- `heartflow`: global and per-chat attention states with limits, interest, willingness, reply budgets
- `actions` / `activation` / `judge`: actions, their activation types, the modifier and LLM judges
- `memory`: conversation memory in SQLite (aiosqlite, FTS5 search), the once-only decision log, saved settings
- `buffer`: a user's multi-part message handed on as one
- `llm`: the injected `complete(prompt, system, options)` from a backend, with the persona's per-call options
- `personas` / `moods` / `prompts`: who she is, how she feels, and the one prompt builder
- `brain`: `Brain.handle_event(event) -> {"actions": [...]}` tying it together

`deployments/brain/deployment.py` hosts a `Brain` on Ray Serve; docs/brain.md documents the contract.
"""
from graph.brain.brain import Brain, BrainConfig
from graph.brain.events import EventValidationError, FeatureCheck, Prompt, parse_event

__all__ = ["Brain", "BrainConfig", "EventValidationError", "FeatureCheck", "Prompt", "parse_event"]
