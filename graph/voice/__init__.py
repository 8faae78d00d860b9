"""The utterance path, as plain Python (no Ray): text in, 20 ms Discord frames out.

- `types`: the dataclasses that flow between stages (AudioChunk, LLMRequest, VCResult, StageError, ...)
- `llm_stream`: SSE / llama.cpp stream parsing; `cleaner` and `segmenter`: tokens -> speakable chunks
- `audio`: resampling, de-click, framing; `pipeline`: the bounded three-stage utterance pipeline
- `protocol` and `conversation`: the WS /v1/voice wire format and one client's queue of utterances
- `trace`: per-utterance milestones and the playout meter; `stage_link`: the direct links to stages
- `config`: the `voice:` settings of a Serve config

Import from the submodules; this package re-exports nothing.
"""
