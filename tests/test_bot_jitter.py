"""The jitter buffer: prebuffer gating, underrun counting, exact frames, thread safety."""
from __future__ import annotations

import threading

import pytest

from bot_client.jitter import FRAME_BYTES, SILENCE_FRAME, JitterBuffer


def frame(value: int) -> bytes:
    return bytes([value % 256]) * FRAME_BYTES


def test_idle_buffer_gives_silence_and_no_underrun():
    buf = JitterBuffer(prebuffer_ms=100)
    assert buf.read() == SILENCE_FRAME
    stats = buf.stats()
    assert stats.silence_frames == 1 and stats.underruns == 0


def test_utterance_waits_for_prebuffer_then_plays_in_order():
    buf = JitterBuffer(prebuffer_ms=100)  # 5 frames
    buf.begin("u1")
    for i in range(4):
        buf.write(frame(i + 1))
    assert buf.read() == SILENCE_FRAME  # 4 < 5: still prebuffering, not an underrun
    buf.write(frame(5))
    assert [buf.read()[0] for _ in range(5)] == [1, 2, 3, 4, 5]
    assert buf.stats().underruns == 0


def test_short_utterance_plays_once_ended_even_below_prebuffer():
    buf = JitterBuffer(prebuffer_ms=100)
    buf.begin("u1")
    buf.write(frame(7))
    assert buf.read() == SILENCE_FRAME
    buf.end("u1")
    assert buf.read()[0] == 7
    assert buf.read() == SILENCE_FRAME
    assert buf.stats().utterances_played == 1


def test_underrun_gives_silence_and_is_counted_once_per_stall():
    buf = JitterBuffer(prebuffer_ms=20)
    buf.begin("u1")
    buf.write(frame(1))
    assert buf.read()[0] == 1
    assert buf.read() == SILENCE_FRAME
    assert buf.read() == SILENCE_FRAME
    buf.write(frame(2))
    assert buf.read()[0] == 2
    stats = buf.stats()
    assert stats.underruns == 2 and stats.stalls == 1


def test_partial_writes_are_reassembled_without_loss():
    buf = JitterBuffer(prebuffer_ms=20)
    payload = bytes(range(256)) * (FRAME_BYTES * 3 // 256)  # exactly 3 frames
    buf.begin("u")
    for start in range(0, len(payload), 1000):  # pieces that straddle frame boundaries
        buf.write(payload[start:start + 1000])
    buf.end("u")
    out = b"".join(buf.read() for _ in range(3))
    assert out == payload


def test_trailing_partial_frame_is_padded_at_utterance_end():
    buf = JitterBuffer(prebuffer_ms=20)
    buf.begin("u")
    buf.write(b"\x01" * 100)
    buf.end("u")
    out = buf.read()
    assert len(out) == FRAME_BYTES and out[:100] == b"\x01" * 100 and out[100:] == bytes(FRAME_BYTES - 100)


def test_consecutive_utterances_play_back_to_back_each_with_its_prebuffer():
    buf = JitterBuffer(prebuffer_ms=40)
    buf.begin("a")
    buf.write(frame(1))
    buf.end("a")
    buf.begin("b")
    buf.write(frame(2))  # b has 1 of 2 prebuffer frames and is not ended
    assert buf.read()[0] == 1
    assert buf.read() == SILENCE_FRAME  # b is prebuffering
    buf.write(frame(3))
    assert [buf.read()[0], buf.read()[0]] == [2, 3]


def test_clear_drops_waiting_audio_and_close_ends_with_empty_bytes():
    buf = JitterBuffer(prebuffer_ms=20)
    buf.begin("u")
    buf.write(frame(1) * 3)
    assert buf.clear() == 3
    assert buf.read() == SILENCE_FRAME
    buf.close()
    assert buf.read() == b""
    assert buf.write(frame(1)) == 0  # nothing is accepted after the end


def test_close_with_drain_plays_what_is_left_first():
    buf = JitterBuffer(prebuffer_ms=100)
    buf.begin("u")
    buf.write(frame(9))
    buf.close(drain=True)
    assert buf.read()[0] == 9
    assert buf.read() == b""


def test_overflow_drops_oldest_and_counts_it():
    buf = JitterBuffer(prebuffer_ms=20, max_buffer_s=0.1)  # 5 frames
    buf.begin("u")
    for i in range(8):
        buf.write(frame(i))
    stats = buf.stats()
    assert stats.fill_frames == 5 and stats.dropped_frames == 3
    assert buf.read()[0] == 3


def test_played_callback_reports_each_finished_utterance():
    finished = []
    buf = JitterBuffer(prebuffer_ms=20, on_utterance_played=finished.append)
    for uid in ("a", "b"):
        buf.begin(uid)
        buf.write(frame(1))
        buf.end(uid)
    for _ in range(4):
        buf.read()
    assert finished == ["a", "b"]


def test_concurrent_writer_and_reader_lose_and_invent_nothing():
    buf = JitterBuffer(prebuffer_ms=20)
    total = 2000
    buf.begin("u")
    got: list[bytes] = []

    def reader():
        while True:
            data = buf.read()
            if data == b"":
                return
            assert len(data) == FRAME_BYTES
            if data != SILENCE_FRAME:
                got.append(data)

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(total):
        buf.write(frame(i % 255 + 1))
    buf.end("u")
    buf.close(drain=True)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert [g[0] for g in got] == [i % 255 + 1 for i in range(total)]


def test_negative_prebuffer_is_rejected():
    with pytest.raises(ValueError):
        JitterBuffer(prebuffer_ms=-1)


def test_idle_silence_stops_after_the_tail_but_an_underrun_never_rests():
    buf = JitterBuffer(prebuffer_ms=20, silence_tail_frames=5)
    for _ in range(4):
        assert buf.read() == SILENCE_FRAME and not buf.resting()
    assert buf.read() == SILENCE_FRAME
    assert buf.resting()  # the tail is out: the player may pause
    buf.begin("u1")
    assert buf.resting()  # announced but nothing to play yet: still no need to send silence
    buf.write(frame(1))
    assert not buf.resting()  # ready: wake up
    assert buf.read()[0] == 1
    for _ in range(20):  # the producer is late mid-utterance: silence keeps flowing, never a rest
        assert buf.read() == SILENCE_FRAME
        assert not buf.resting()
    buf.write(frame(2))
    buf.end("u1")
    assert buf.read()[0] == 2
    for _ in range(5):
        assert not buf.resting()
        assert buf.read() == SILENCE_FRAME
    assert buf.resting()
    stats = buf.stats()
    assert stats.underruns == 20 and stats.idle_silence_frames == 10 and stats.silence_frames == 30


def test_prebuffering_counts_as_idle_and_an_ended_short_utterance_wakes():
    buf = JitterBuffer(prebuffer_ms=100, silence_tail_frames=2)
    buf.begin("u1")
    buf.write(frame(3))  # 1 of 5 prebuffer frames
    buf.read(), buf.read()
    assert buf.resting()
    buf.end("u1")  # ended below the prebuffer: plays now
    assert not buf.resting()
    assert buf.read()[0] == 3


def test_wake_listener_hears_writes_ends_and_close():
    buf = JitterBuffer(prebuffer_ms=20)
    woken = []
    buf.set_wake_listener(lambda: woken.append(buf.resting()))
    buf.begin("u")
    assert woken == []  # an announcement alone has nothing to play
    buf.write(frame(1)[:100])
    buf.write(frame(1)[100:])
    buf.end("u")
    buf.close()
    assert len(woken) == 3  # the write that completed no frame added nothing to play
    assert not buf.resting()  # closed: the player must read once more to get b""
    assert buf.read() == b""


def test_silence_tail_must_be_at_least_one_frame():
    with pytest.raises(ValueError):
        JitterBuffer(silence_tail_frames=0)
