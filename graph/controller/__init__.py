"""The voice-session controller, as plain Python (no Ray): blackouts, leases, the text queue, the audit log.

- `state_machine`: `SessionController`, the one place that decides; `checkpoint`: its SQLite store
- `features`: the features a session switches and what it does to each; `config`: controller.yaml
- `sessions`, `text_queue`, `audit`: the values it takes and returns; `errors`: its refusals
- `headroom` and `telemetry`: whether the GPUs can take a session (VRAM read through nvidia-ml-py/amdsmi);
  `vram_watch`: warnings when VRAM goes over its limit during a session
- `limits`: what it stores and answers at most (message sizes, integer ranges, id lengths, page budget)

`deployments/controller/actor.py` hosts it in a restartable Ray actor. Import from the submodules.
"""
