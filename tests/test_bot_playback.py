"""Playback through discord.py's real AudioPlayer thread and real libopus (no Discord connection).

A `RecordingVoiceClient` takes the place of the UDP socket; everything else (player thread, pacing,
Opus encoding) is discord.py 2.7.1's own code. Timing is measured in benchmarks/playback.py; here we
check counts, order and content.
"""
from __future__ import annotations

import asyncio

import numpy as np

from bot_client.jitter import FRAME_BYTES, JitterBuffer
from bot_client.loopback import RecordingVoiceClient, aligned_snr_db
from bot_client.playback import JitterAudioSource

SR = 48_000


def stereo_tone(frames: int, freqs=(440.0, 660.0), amplitude=0.4) -> bytes:
    t = np.arange(frames * 960) / SR
    left = amplitude * np.sin(2 * np.pi * freqs[0] * t)
    right = amplitude * np.sin(2 * np.pi * freqs[1] * t)
    pcm = (np.stack([left, right], axis=1) * 32767).astype("<i2")
    return pcm.tobytes()


def snr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    return aligned_snr_db(reference, decoded)


async def wait_for(predicate, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def strip_silence(pcm: np.ndarray) -> np.ndarray:
    nz = np.flatnonzero(np.abs(pcm) > 50)
    return pcm[nz[0]: nz[-1] + 1] if len(nz) else pcm[:0]


async def test_frames_are_encoded_and_decode_back_to_the_input():
    loop = asyncio.get_running_loop()
    vc = RecordingVoiceClient(loop)
    # The whole utterance is held before it starts, so a busy machine cannot slip an underrun (inserted
    # silence) into the comparison; underruns have their own test below.
    buf = JitterBuffer(prebuffer_ms=2000)
    source = JitterAudioSource(buf)
    finished = asyncio.Event()
    vc.play(source, after=lambda err: loop.call_soon_threadsafe(finished.set))

    audio = stereo_tone(100)  # 2 s
    buf.begin("u1")
    for start in range(0, len(audio), FRAME_BYTES * 5):  # the graph sends groups of frames
        buf.write(audio[start:start + FRAME_BYTES * 5])
        # ahead of real time, never paced by the clock: a write that came late under load would be an
        # underrun (a gap in the decoded audio); underruns are test_stalled_producer_...'s subject
        await asyncio.sleep(0)
    buf.end("u1")
    await wait_for(lambda: buf.stats().utterances_played == 1)
    buf.close()
    await asyncio.wait_for(finished.wait(), 10)

    packets = vc.audio_packets()
    assert all(p.pcm_bytes == FRAME_BYTES for p in packets), "a short frame reached the encoder"
    assert source.short_reads == 0
    assert [p.at for p in packets] == sorted(p.at for p in packets)
    stats = buf.stats()
    assert stats.frames_played == 100 and stats.underruns == 0
    assert len(packets) == stats.frames_played + stats.silence_frames

    # the player ran before the first write and sent silence while idle; how many frames of it depends
    # on scheduling, so the comparison starts where the utterance does
    idle = next(i for i, p in enumerate(packets) if any(p.pcm))
    decoded = np.frombuffer(vc.decode_all(), dtype="<i2").reshape(-1, 2)[idle * 960:]
    reference = np.frombuffer(audio, dtype="<i2").reshape(-1, 2)
    for channel in (0, 1):
        snr = snr_db(reference[:, channel], decoded[:, channel])
        print(f"SNR channel {channel}: {snr:.1f} dB")
        assert snr > 15.0


async def test_stalled_producer_gives_silence_then_resumes_without_a_burst():
    loop = asyncio.get_running_loop()
    vc = RecordingVoiceClient(loop)
    buf = JitterBuffer(prebuffer_ms=60)
    source = JitterAudioSource(buf, vc)  # pausing on: it must not pause mid-utterance
    finished = asyncio.Event()
    vc.play(source, after=lambda err: loop.call_soon_threadsafe(finished.set))

    first, second = stereo_tone(20, (440, 440)), stereo_tone(20, (880, 880))
    buf.begin("u")
    buf.write(first)
    await wait_for(lambda: buf.stats().frames_played == 20)
    await wait_for(lambda: buf.stats().underruns >= 10)  # the graph stalls: the player keeps ticking
    # Each underrun is a real packet of silence (counted once sent, not when read), no pause mid-speech.
    await wait_for(lambda: len(vc.audio_packets()) >= 20 + 10)
    assert not source.paused
    buf.write(second)
    buf.end("u")
    await wait_for(lambda: buf.stats().utterances_played == 1)
    buf.close()
    await asyncio.wait_for(finished.wait(), 10)

    stats = buf.stats()
    assert stats.stalls == 1 and stats.underruns >= 10
    assert all(p.pcm_bytes == FRAME_BYTES for p in vc.audio_packets())
    decoded = np.frombuffer(vc.decode_all(), dtype="<i2").reshape(-1, 2)[:, 0]
    frames = decoded[: len(decoded) // 960 * 960].reshape(-1, 960)
    loud = np.flatnonzero(np.abs(frames).max(axis=1) > 1000)
    gaps = np.diff(loud)
    # loud (first part) -> at least 10 quiet frames (the stall) -> loud (second part), and nothing else quiet
    assert int(gaps.max()) >= 10
    assert int((gaps > 1).sum()) == 1
    assert len(loud) >= 38  # 40 frames of tone (the codec's warm-up may soften one at each edge)


async def test_source_returns_empty_bytes_only_when_the_session_ends():
    loop = asyncio.get_running_loop()
    vc = RecordingVoiceClient(loop)
    buf = JitterBuffer()
    source = JitterAudioSource(buf, vc)
    errors = []
    done = asyncio.Event()

    def after(err):
        errors.append(err)
        loop.call_soon_threadsafe(done.set)

    vc.play(source, after=after)
    await wait_for(lambda: source.paused)
    assert vc.player is not None and vc.player.is_alive()  # idle means a pause, not the end
    buf.close()  # wakes the paused player, which reads b"" and stops
    await asyncio.wait_for(done.wait(), 10)
    assert errors == [None]
    assert all(p.pcm_bytes == FRAME_BYTES for p in vc.audio_packets())


def utterance_frames(count: int, first_value: int) -> list[bytes]:
    """Frames each recognisable by value (no two alike), so a lost or repeated frame shows."""
    return [bytes([(first_value + i) % 250 + 1]) * FRAME_BYTES for i in range(count)]


async def test_idle_player_stops_after_the_silence_tail_and_the_next_utterances_play_whole():
    loop = asyncio.get_running_loop()
    vc = RecordingVoiceClient(loop)
    buf = JitterBuffer(prebuffer_ms=60)
    source = JitterAudioSource(buf, vc)
    done = asyncio.Event()
    vc.play(source, after=lambda err: loop.call_soon_threadsafe(done.set))
    silence = bytes(FRAME_BYTES)

    # Nothing to say yet: five frames of silence, then the player pauses and sends nothing more.
    await wait_for(lambda: vc.opus_silence_packets() == 5)  # discord.py's own tail as it pauses: it waits now
    assert source.paused and vc.is_paused()
    assert [p.pcm for p in vc.audio_packets()] == [silence] * 5

    expected = [silence] * 5
    for number, first_value in enumerate((1, 100), start=1):
        frames = utterance_frames(30, first_value)
        buf.begin(f"u{number}")
        buf.write(b"".join(frames))  # wakes the paused player
        buf.end(f"u{number}")
        await wait_for(lambda: vc.opus_silence_packets() == 5 * (number + 1))  # paused again, waiting
        assert source.paused and buf.stats().utterances_played == number
        expected += frames + [silence] * 5
        # Every frame of the utterance, first one included, then exactly the tail: no idle stream.
        assert [p.pcm for p in vc.audio_packets()] == expected
    assert source.pauses == 3 and source.resumes == 2
    stats = buf.stats()
    assert stats.frames_played == 60 and stats.underruns == 0 and stats.idle_silence_frames == 15
    assert vc.player.is_alive()

    buf.close()
    await asyncio.wait_for(done.wait(), 10)
    assert len(vc.audio_packets()) == len(expected)


async def test_underrun_mid_utterance_keeps_sending_silence_with_pausing_on():
    loop = asyncio.get_running_loop()
    vc = RecordingVoiceClient(loop)
    buf = JitterBuffer(prebuffer_ms=20)
    source = JitterAudioSource(buf, vc)
    done = asyncio.Event()
    vc.play(source, after=lambda err: loop.call_soon_threadsafe(done.set))
    await wait_for(lambda: source.paused)
    buf.begin("u")
    buf.write(b"".join(utterance_frames(3, 1)))
    # The graph is late mid-utterance: the player keeps ticking with silence, far past the idle tail.
    await wait_for(lambda: buf.stats().underruns >= 3 * buf.silence_tail_frames)
    assert not source.paused and source.pauses == 1
    buf.write(b"".join(utterance_frames(3, 10)))
    buf.end("u")
    await wait_for(lambda: buf.stats().utterances_played == 1 and source.paused)
    played = [p.pcm for p in vc.audio_packets() if p.pcm != bytes(FRAME_BYTES)]
    assert played == utterance_frames(3, 1) + utterance_frames(3, 10)
    buf.close()
    await asyncio.wait_for(done.wait(), 10)


async def test_player_gives_up_after_voice_link_loss_and_reports_it():
    loop = asyncio.get_running_loop()
    vc = RecordingVoiceClient(loop, timeout=0.2)
    buf = JitterBuffer()
    done = asyncio.Event()
    vc.play(JitterAudioSource(buf), after=lambda err: loop.call_soon_threadsafe(done.set))
    await wait_for(lambda: len(vc.audio_packets()) >= 3)
    vc.drop_connection()
    await asyncio.wait_for(done.wait(), 10)  # the player stops, which tells the session the link is gone
    buf.close()
