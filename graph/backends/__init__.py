"""Model backends for the three model stages (LLM, TTS, VC), chosen per stage in config.

Backends are plain async Python (no Ray) so they run in-process in tests and benchmarks and inside
Serve replicas alike. `create_backend("tts", {"backend": "espeak", ...})` builds one by name; the
registry maps names to import paths so heavy optional dependencies are imported only when used.
"""
from graph.backends.base import (
    BACKENDS,
    LLMBackend,
    TTSBackend,
    VCBackend,
    create_backend,
)

__all__ = ["BACKENDS", "LLMBackend", "TTSBackend", "VCBackend", "create_backend"]
