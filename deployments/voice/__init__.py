"""Hosts of the voice path: the `VoiceGraph` ingress and its direct voice port, the model-stage deployments,
and the Soprano ZMQ worker process."""
