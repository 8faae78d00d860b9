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
    buf = JitterBuffer(prebuffer_ms=100)
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
    assert stats.frames_played == 100
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
    source = JitterAudioSource(buf)
    finished = asyncio.Event()
    vc.play(source, after=lambda err: loop.call_soon_threadsafe(finished.set))

    first, second = stereo_tone(20, (440, 440)), stereo_tone(20, (880, 880))
    buf.begin("u")
    buf.write(first)
    await wait_for(lambda: buf.stats().frames_played == 20)
    await wait_for(lambda: buf.stats().underruns >= 10)  # the graph stalls: the player keeps ticking
    packets_during_stall = len(vc.audio_packets())
    buf.write(second)
    buf.end("u")
    await wait_for(lambda: buf.stats().utterances_played == 1)
    buf.close()
    await asyncio.wait_for(finished.wait(), 10)

    stats = buf.stats()
    assert stats.stalls == 1 and stats.underruns >= 10
    assert all(p.pcm_bytes == FRAME_BYTES for p in vc.audio_packets())
    # Each underrun was a real 20 ms packet of silence, not a pause followed by a catch-up burst.
    assert packets_during_stall >= 20 + 10
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
    source = JitterAudioSource(buf)
    errors = []
    done = asyncio.Event()

    def after(err):
        errors.append(err)
        loop.call_soon_threadsafe(done.set)

    vc.play(source, after=after)
    await wait_for(lambda: len(vc.audio_packets()) >= 10)
    assert vc.player is not None and vc.player.is_alive()  # idle means silence, not the end
    buf.close()
    await asyncio.wait_for(done.wait(), 10)
    assert errors == [None]
    assert all(p.pcm_bytes == FRAME_BYTES for p in vc.audio_packets())


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
