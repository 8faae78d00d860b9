"""The controller's refusals: each carries the HTTP status its route answers and a message to show."""
from __future__ import annotations


class ControllerError(Exception):
    """A request the controller refuses; `http_status` is what the HTTP route answers, `message` the text."""

    http_status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class SessionConflict(ControllerError):
    """A session is active (and no more are allowed) or the GPUs lack headroom; message is user-facing."""

    http_status = 409


class UnknownSession(ControllerError):
    http_status = 404


class SessionGone(ControllerError):
    """The session ended or its lease ran out: the client must start a new one."""

    http_status = 410


class UnknownFeature(ControllerError):
    http_status = 404


class CheckpointError(ControllerError):
    """The change could not be made durable, so it was not made at all."""

    http_status = 503


class InvalidRequest(ControllerError):
    """A value out of range or of the wrong shape; the message names it."""

    http_status = 422


class PayloadTooLarge(ControllerError):
    """Something bigger than the controller stores (a queued message's content or event)."""

    http_status = 413
