"""Music in the voice channel through discord.py's real AudioPlayer and libopus (bot_client/music.py).

Test audio is written with PyAV into tmp_path; URLs are served by a local aiohttp server. Levels are
measured per 20 ms frame of the PCM that went into the Opus encoder: the music is a 450 Hz tone and the
voice a 3000 Hz tone (9 and 60 whole cycles per frame, so each one's amplitude is read off its own
frequency without the other leaking in). Everything is counted in frames, nothing is timed.
"""
from __future__ import annotations

import asyncio
import os
import threading
from unittest.mock import AsyncMock, MagicMock

import av
import discord
import numpy as np
import pytest
from aiohttp import web

from bot_client.config import BotConfig, MusicConfig, PermissionsConfig, SessionConfig
from bot_client.graph_api import GraphClient, GraphHealth, SessionInfo, StageHealth, VoiceStream
from bot_client.jitter import FRAME_BYTES, JitterBuffer
from bot_client.loopback import RecordingVoiceClient
from bot_client.music import (
    LIMITER_CEILING,
    MusicMixer,
    MusicPlayer,
    MusicRequestError,
    MusicState,
    TrackKind,
    db_to_gain,
    resolve_track,
)
from bot_client.playback import JitterAudioSource
from bot_client.session import NOT_IN_SESSION, JoinRequest, PresenceKeeper, SessionManager, VoiceSession
from tests.test_bot_commands import context, make_bot, member

SR = 48_000
FS = 32767.0
MUSIC_HZ = 450.0
VOICE_HZ = 3000.0


def write_tone(path, seconds: float, freq: float = MUSIC_HZ, amplitude: float = 0.5, rate: int = 44_100,
               codec: str = "flac") -> str:
    """A mono sine written with PyAV (FLAC, Opus in Ogg, 16-bit WAV), at a rate that must be resampled (not Opus)."""
    samples = int(seconds * rate)
    t = np.arange(samples) / rate
    pcm = (amplitude * np.sin(2 * np.pi * freq * t) * FS).astype(np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        step = 4096
        for start in range(0, samples, step):
            frame = av.AudioFrame.from_ndarray(pcm[None, start:start + step], format="s16", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return str(path)


def voice_tone(frames: int, amplitude: float) -> bytes:
    t = np.arange(frames * 960) / SR
    mono = (amplitude * np.sin(2 * np.pi * VOICE_HZ * t) * FS).astype("<i2")
    return np.repeat(mono[:, None], 2, axis=1).tobytes()


def levels(pcm: bytes, freq: float) -> np.ndarray:
    """Per 20 ms frame, the amplitude (in full-scale units) of `freq` in the left channel."""
    left = np.frombuffer(pcm, dtype="<i2").reshape(-1, 2)[:, 0].astype(np.float64)
    frames = left[: len(left) // 960 * 960].reshape(-1, 960)
    basis = np.exp(-2j * np.pi * freq * np.arange(960) / SR)
    return 2.0 * np.abs(frames @ basis) / 960 / FS


async def wait_for(predicate, timeout=30.0, what="condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached in time")
        await asyncio.sleep(0.01)


class Notices:
    """The cog's callback, as the session gives it: called from a player/decoder thread."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, text: str) -> None:
        with self._lock:
            self.texts.append(text)

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.texts)


class Rig:
    """A JitterBuffer + MusicPlayer feeding discord.py's AudioPlayer, which encodes with libopus."""

    def __init__(self, loop, config: MusicConfig, prebuffer_ms: int = 20) -> None:
        self.vc = RecordingVoiceClient(loop)
        self.buffer = JitterBuffer(prebuffer_ms=prebuffer_ms)
        self.notices = Notices()
        self.music = MusicPlayer(config, notify=self.notices)
        self.source = JitterAudioSource(self.buffer, self.vc, music=self.music)
        self.done = asyncio.Event()
        self.vc.play(self.source, after=lambda err: loop.call_soon_threadsafe(self.done.set))

    async def close(self) -> None:
        self.music.close()
        self.buffer.close()
        await asyncio.wait_for(self.done.wait(), 10)

    def assert_whole_frames(self) -> None:
        assert self.source.short_reads == 0
        assert all(p.pcm_bytes == FRAME_BYTES for p in self.vc.audio_packets())


def music_config(tmp_path, **kw) -> MusicConfig:
    kw.setdefault("directory", str(tmp_path))
    kw.setdefault("volume", 100)
    kw.setdefault("buffer_s", 10.0)  # the test tracks fit: a busy machine cannot starve the decoder mid-test
    return MusicConfig(**kw)


@pytest.mark.parametrize("volume", [100, 40])
async def test_music_alone_plays_at_its_level_then_the_player_rests(tmp_path, volume):
    write_tone(tmp_path / "tone.flac", 1.0, amplitude=0.5)
    loop = asyncio.get_running_loop()
    rig = Rig(loop, music_config(tmp_path, volume=volume))
    await wait_for(lambda: rig.source.paused, what="idle pause")  # nothing playing: the player rests
    assert rig.music.enqueue(resolve_track("tone.flac", rig.music.config)) == 0
    await wait_for(lambda: rig.music.played == 1 and rig.source.paused, what="track played, rest again")
    rig.assert_whole_frames()
    assert rig.source.resumes == 1 and rig.source.pauses == 2  # music woke the player and it rested after
    assert rig.music.frames_played == 50  # 1 s at 44.1 kHz, resampled to 48 kHz: 50 frames, none lost

    pcm = rig.vc.fed_pcm()
    level = levels(pcm, MUSIC_HZ)
    playing = np.flatnonzero(level > 0.02)
    # the middle of the track is at its own level times the volume
    middle = level[playing[2]: playing[-2]]
    assert len(middle) >= 40
    assert np.allclose(middle, 0.5 * volume / 100, rtol=0.02), middle
    # after the music: the five-frame silence tail, then nothing until the player is woken again
    tail = rig.vc.audio_packets()[playing[-1] + 1:]
    assert [p.pcm for p in tail] == [bytes(FRAME_BYTES)] * 5
    # the Opus stream carries it too
    decoded = levels(rig.vc.decode_all(), MUSIC_HZ)
    assert np.median(decoded[playing[5]: playing[-5]]) == pytest.approx(0.5 * volume / 100, rel=0.1)
    await rig.close()


async def test_music_ducks_within_the_attack_when_she_speaks_and_recovers_after_the_release(tmp_path):
    write_tone(tmp_path / "long.ogg", 5.0, amplitude=0.5, rate=48_000, codec="libopus")
    config = music_config(tmp_path, duck_db=12.0, attack_ms=50.0, release_ms=300.0)
    loop = asyncio.get_running_loop()
    rig = Rig(loop, config)
    rig.music.enqueue(resolve_track("long.ogg", config))
    await wait_for(lambda: rig.music.frames_played >= 40, what="music playing")
    rig.buffer.begin("u")
    rig.buffer.write(voice_tone(40, 0.3))
    rig.buffer.end("u")
    await wait_for(lambda: rig.buffer.stats().utterances_played == 1, what="utterance played")
    played_at_end = rig.music.frames_played
    await wait_for(lambda: rig.music.frames_played >= played_at_end + 40, what="music after the utterance")
    rig.music.stop()
    await rig.close()
    rig.assert_whole_frames()

    pcm = rig.vc.fed_pcm()
    music, voice = levels(pcm, MUSIC_HZ), levels(pcm, VOICE_HZ)
    spoken = np.flatnonzero(voice > 0.05)
    start, end = int(spoken[0]), int(spoken[-1])
    assert end - start + 1 == 40  # every voice frame, in one run
    assert np.allclose(voice[start:end + 1], 0.3, rtol=0.02)  # the voice itself is never ducked
    full, ducked = 0.5, 0.5 * db_to_gain(-12.0)
    assert np.allclose(music[start - 10:start], full, rtol=0.02)  # before she speaks: full level
    attack_frames = -(-50 // 20)  # the ramp is over within ceil(50 ms / 20 ms) frames of her first one
    assert ducked * 1.02 < music[start] < full * 0.98  # ramping down from her very first frame
    assert np.allclose(music[start + attack_frames:end + 1], ducked, rtol=0.03), music[start:end + 1]
    release_frames = -(-300 // 20)
    recovery = music[end + 1:end + 1 + release_frames]
    assert np.all(np.diff(recovery) > 0) and recovery[0] < full * 0.6  # a ramp, not a jump
    assert np.allclose(music[end + 1 + release_frames:end + 1 + release_frames + 20], full, rtol=0.02)


async def test_loud_voice_over_loud_music_is_limited_and_never_clips_or_wraps(tmp_path):
    write_tone(tmp_path / "loud.wav", 2.0, amplitude=0.95, codec="pcm_s16le")
    config = music_config(tmp_path, duck_db=0.0)  # no ducking at all: the sum reaches 1.9 x full scale
    loop = asyncio.get_running_loop()
    rig = Rig(loop, config)
    rig.music.enqueue(resolve_track("loud.wav", config))
    await wait_for(lambda: rig.music.frames_played >= 10, what="music playing")
    rig.buffer.begin("u")
    rig.buffer.write(voice_tone(50, 0.95))
    rig.buffer.end("u")
    await wait_for(lambda: rig.buffer.stats().utterances_played == 1, what="utterance played")
    await wait_for(lambda: rig.music.played == 1, what="music played")
    await rig.close()
    rig.assert_whole_frames()

    samples = np.frombuffer(rig.vc.fed_pcm(), dtype="<i2").astype(np.int32)
    assert rig.source.mixer.limited_frames >= 40
    assert np.abs(samples).max() <= LIMITER_CEILING + 1  # under full scale: nothing was clipped
    # wrap-around would jump by ~65000 between samples; two 0.95 tones cannot move faster than this
    max_slope = 0.95 * FS * 2 * np.pi * (MUSIC_HZ + VOICE_HZ) / SR
    assert np.abs(np.diff(samples.reshape(-1, 2)[:, 0])).max() <= max_slope * 1.05
    voice = levels(rig.vc.fed_pcm(), VOICE_HZ)
    assert np.count_nonzero(voice > 0.3) >= 48  # the voice is still there, limited, not lost


def test_limiter_keeps_full_scale_voice_plus_music_under_the_ceiling_with_signs_intact():
    mixer = MusicMixer(duck_db=0.0)
    voice = np.full((960, 2), -32768, dtype="<i2")
    voice[::2] = 32767
    out = np.frombuffer(mixer.mix(voice.tobytes(), voice.tobytes(), 1.0, True), dtype="<i2")
    assert np.abs(out.astype(np.int32)).max() <= LIMITER_CEILING + 1
    assert np.array_equal(np.sign(out), np.sign(voice.reshape(-1)))  # limited, not wrapped around
    # silence after: the limiter recovers gradually and a quiet frame passes at its own level
    for _ in range(20):
        mixer.mix(bytes(FRAME_BYTES), None, 1.0, False)
    quiet = (np.ones((960, 2)) * 1000).astype("<i2").tobytes()
    assert mixer.mix(quiet, None, 1.0, False) == quiet


async def test_a_stalled_stream_plays_silence_without_blocking_read_and_is_skipped(tmp_path):
    write_tone(tmp_path / "next.flac", 0.5, amplitude=0.5)
    stream_bytes = open(write_tone(tmp_path / "stream.wav", 10.0, codec="pcm_s16le"), "rb").read()
    release = asyncio.Event()
    sent_part = asyncio.Event()

    async def stalling(request):
        response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
        await response.prepare(request)
        await response.write(stream_bytes[: 44 + 44_100 * 2])  # the header and one second of audio
        sent_part.set()
        await release.wait()  # then nothing: a stalled server
        return response

    app = web.Application()
    app.router.add_get("/stall.wav", stalling)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        # FFmpeg would wait a minute for data: the player's stall counter (50 frames) decides; should the
        # stall catch the stream still opening, the open timeout (and counter) of 20 s would.
        config = music_config(tmp_path, allow_private_urls=True, stall_s=1.0, open_timeout_s=20.0,
                              read_timeout_s=60.0)
        loop = asyncio.get_running_loop()
        rig = Rig(loop, config)
        url = f"http://127.0.0.1:{port}/stall.wav"
        assert rig.music.enqueue(resolve_track(url, config)) == 0
        assert rig.music.enqueue(resolve_track("next.flac", config)) == 1
        await wait_for(lambda: rig.music.played == 1, timeout=90, what="the next track played")
        notices = rig.notices.snapshot()
        assert len(notices) == 1 and "stall.wav" in notices[0] and "stalled" in notices[0], notices
        assert sent_part.is_set() and rig.music.skipped == 1
        # read() went on returning whole frames while the decoder thread sat in a network read: at least
        # the stall's 50 frames of silence were read and sent (a blocking read() would have sent none)
        assert rig.music.starved_frames >= 50
        rig.assert_whole_frames()
        assert len(rig.vc.audio_packets()) >= rig.music.frames_played + rig.music.starved_frames
        await rig.close()
    finally:
        release.set()
        await runner.cleanup()


async def test_a_corrupt_file_and_an_unreachable_url_are_skipped_with_a_message_and_the_next_plays(tmp_path):
    (tmp_path / "corrupt.ogg").write_bytes(b"OggS" + os.urandom(20_000))
    (tmp_path / "empty.wav").write_bytes(b"")
    write_tone(tmp_path / "good.flac", 0.6, amplitude=0.5)
    with __import__("socket").socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    config = music_config(tmp_path, allow_private_urls=True)
    loop = asyncio.get_running_loop()
    rig = Rig(loop, config)
    for request in ("corrupt.ogg", f"http://127.0.0.1:{dead_port}/gone.mp3", "empty.wav", "good.flac"):
        rig.music.enqueue(resolve_track(request, config))
    await wait_for(lambda: rig.music.played == 1 and rig.source.paused, what="the good track played")
    notices = rig.notices.snapshot()
    assert len(notices) == 3 and rig.music.skipped == 3
    for name, text in zip(("corrupt.ogg", "gone.mp3", "empty.wav"), notices):
        assert text.startswith(f"⚠️ Skipped **{name}**"), text
    assert rig.music.frames_played == 30
    level = levels(rig.vc.fed_pcm(), MUSIC_HZ)
    assert np.count_nonzero(np.isclose(level, 0.5, rtol=0.02)) >= 26
    rig.assert_whole_frames()
    await rig.close()


def test_paths_out_of_the_music_folder_and_non_http_urls_are_refused(tmp_path):
    root = tmp_path / "music"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.flac").write_bytes(b"x")
    (tmp_path / "secret.wav").write_bytes(b"x")
    (root / "out.wav").symlink_to(tmp_path / "secret.wav")
    (root / "in.flac").symlink_to(root / "sub" / "a.flac")
    (root / "outdir").symlink_to(tmp_path)
    config = MusicConfig(directory=str(root))

    track = resolve_track("sub/a.flac", config)
    assert track.kind is TrackKind.FILE and track.location == str((root / "sub" / "a.flac").resolve())
    assert resolve_track("in.flac", config).location == track.location  # a link inside the folder is fine
    refused = ["../secret.wav", "sub/../../secret.wav", str(tmp_path / "secret.wav"), "out.wav",
               "outdir/secret.wav", "missing.flac", "", "file:///etc/passwd", "ftp://example.com/a.mp3",
               "rtmp://example.com/live", "concat:a.flac|b.flac", "pipe:0", "http://", "javascript:alert(1)"]
    for request in refused:
        with pytest.raises(MusicRequestError):
            resolve_track(request, config)
    # URLs: http(s) only; a local or private address needs allow_private_urls
    for url in ("http://127.0.0.1:8000/v1/sessions", "https://10.1.2.3/a.mp3", "http://[::1]/a.ogg"):
        with pytest.raises(MusicRequestError, match="private or local"):
            resolve_track(url, config)
    assert resolve_track("http://127.0.0.1/a.ogg", MusicConfig(allow_private_urls=True)).kind is TrackKind.URL
    assert resolve_track("<https://93.184.215.14/song.mp3>", config).title == "song.mp3"
    with pytest.raises(MusicRequestError, match="No music folder"):
        resolve_track("a.flac", MusicConfig())


async def test_music_commands_are_role_gated_and_need_a_session(tmp_path):
    write_tone(tmp_path / "tone.flac", 0.2)
    bot, _ = await make_bot(PermissionsConfig(music=("DJ",), stop=("Mods",)))
    bot.config = BotConfig(permissions=bot.config.permissions, music=music_config(tmp_path),
                           sync_app_commands=False)
    session = AsyncMock(spec=VoiceSession)
    session.music = MusicPlayer(bot.config.music)
    session.stop_speaking.return_value = 0
    bot.manager.get = MagicMock(return_value=session)
    cog = bot.get_cog("Voice")

    fan = context(member(roles=("Fans",)))
    await cog.play.callback(cog, fan, track="tone.flac")
    assert "permission" in fan.reply.await_args.args[0] and "DJ" in fan.reply.await_args.args[0]
    assert session.music.status().current is None
    for command, args in ((cog.pause, ()), (cog.resume, ()), (cog.skip, ()), (cog.volume, (30,)),
                          (cog.stop, ("music",)), (cog.stop, ())):
        ctx = context(member(roles=("Fans",)))
        await command.callback(cog, ctx, *args)
        assert "permission" in ctx.reply.await_args.args[0], command.name
    assert session.music.volume == 100
    session.stop_speaking.assert_not_awaited()

    dj = context(member(roles=("dj",)))
    await cog.play.callback(cog, dj, track="tone.flac")
    assert dj.reply.await_args.args[0].startswith("🎵 Playing **tone.flac**")
    await cog.play.callback(cog, dj, track="../etc/passwd")
    assert "outside the music folder" in dj.reply.await_args.args[0]
    await cog.volume.callback(cog, dj, 30)
    assert session.music.volume == 30
    await cog.volume.callback(cog, dj, 130)
    assert "0 to 100" in dj.reply.await_args.args[0] and session.music.volume == 30
    await cog.pause.callback(cog, dj)
    assert session.music.status().state is MusicState.PAUSED
    anyone = context(member(roles=("Fans",)))
    await cog.queue.callback(cog, anyone)  # looking is not guarded
    assert "Paused" in anyone.reply.await_args.args[0] and "tone.flac" in anyone.reply.await_args.args[0]
    await cog.stop.callback(cog, dj, "music")
    assert "Music stopped" in dj.reply.await_args.args[0]
    assert session.music.status().state is MusicState.IDLE
    session.stop_speaking.assert_not_awaited()  # `stop music` leaves her voice alone

    bot.manager.get = MagicMock(return_value=None)
    ctx = context(member(roles=("DJ",)))
    await cog.play.callback(cog, ctx, track="tone.flac")
    ctx.reply.assert_awaited_once_with(NOT_IN_SESSION, mention_author=False)


async def test_music_stops_when_the_session_ends(tmp_path):
    write_tone(tmp_path / "long.flac", 20.0, amplitude=0.5)
    config = BotConfig(session=SessionConfig(heartbeat_interval_s=3600), music=music_config(tmp_path, buffer_s=2.0))
    graph = AsyncMock(spec=GraphClient)
    graph.health.return_value = GraphHealth(ok=True, stages=(StageHealth("tts", "espeak", True),
                                                              StageHealth("vc", "world", True)))
    graph.start_session.return_value = SessionInfo("s1", 30.0, ())

    async def open_voice(on_audio, on_event, on_closed=None):
        return AsyncMock(spec=VoiceStream)

    graph.open_voice.side_effect = open_voice
    manager = SessionManager(graph, config, PresenceKeeper(AsyncMock()))
    loop = asyncio.get_running_loop()
    link = RecordingVoiceClient(loop)
    notices: list[str] = []

    async def notify(text):
        notices.append(text)

    async def connect(_channel_id):
        return link

    outcome = await manager.join(JoinRequest(1, 2, 3, 4), connect, notify)
    assert outcome.ok
    session = outcome.session
    session.music.enqueue(resolve_track("long.flac", config.music))
    await wait_for(lambda: session.music.frames_played >= 20, what="music playing in the session")
    decoder = session.music.current
    await manager.leave(1)
    await wait_for(lambda: link.player is not None and not link.player.is_alive(), what="player stopped")
    assert session.music.status().state is MusicState.IDLE and session.music.status().queued == ()
    assert decoder is not None and decoder.join(10)  # the decoding thread ended too
    with pytest.raises(MusicRequestError):
        session.music.enqueue(resolve_track("long.flac", config.music))
    assert session.music.frames_played < 20 * 50  # it did not play to the end
    assert notices and notices[-1].startswith("👋")
