"""`!miku voice-status` as text, from plain values."""
from __future__ import annotations

from .feature_words import features_report
from .graph_api import FeatureState, GraphHealth
from .session import SessionStatus


def _age(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def format_status(
    status: SessionStatus | None,
    features: list[FeatureState] | None,
    health: GraphHealth | None,
    graph_error: str | None = None,
    command: str = "!miku",
) -> str:
    """The voice-status report: channels, GPU routing, each feature's state in words, queue, age, time to
    first audio."""
    lines = ["**🎤 Voice status**"]
    if status is None:
        lines.append(f"Not in a voice session. Use `{command} join` to start one.")
    else:
        lines.append(f"Voice channel: <#{status.voice_channel_id}> · prompt channel: <#{status.prompt_channel_id}>")
        state = "speaking" if status.speaking else "listening"
        if not status.voice_ok:
            state += " (voice link down: text mode)"
        lines.append(f"Session `{status.session_id}` · {state} · age {_age(status.age_s)}")
        lines.append(f"Prompts waiting: {status.queue_length}")
        if status.recent_ttfa_ms:
            ttfa = ", ".join(f"{v:.0f} ms" for v in status.recent_ttfa_ms)
            lines.append(f"Time to first audio (last {len(status.recent_ttfa_ms)}): {ttfa}")
        pb = status.playback
        lines.append(
            f"Playback: {pb.get('frames_played', 0)} frames, {pb.get('underruns', 0)} underruns, "
            f"buffer {pb.get('fill_frames', 0) * 20} ms"
        )
        if status.hearing is not None:
            h, rx = status.hearing, status.hearing.get("receive", {})
            lines.append(
                f"Hearing: {rx.get('speakers_started', 0)} speakers, {h.get('turns', 0)} turns, "
                f"{h.get('barge_ins', 0)} interruptions, {h.get('commands', 0)} voice commands · "
                f"packets lost {rx.get('lost', 0)}, DAVE refused {rx.get('dave_failures', 0)}, "
                f"bad {rx.get('malformed', 0) + rx.get('transport_failures', 0) + rx.get('opus_failures', 0)}"
            )
    if health is not None:
        routing = ", ".join(
            f"{s.stage}: {s.backend}{f' on {s.placement}' if s.placement else ''}{'' if s.ok else ' (down)'}"
            for s in health.stages
        ) or "unknown"
        lines.append(f"GPU routing / backends: {routing}")
    if features is not None:
        lines.append("What I can do right now:")
        lines += features_report(features)
    if graph_error:
        lines.append(f"⚠️ Graph: {graph_error}")
    return "\n".join(lines)
