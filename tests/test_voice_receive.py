"""The receive path without Discord: espeak-ng speech -> libopus -> a real DAVE group's encryption -> RTP sealed
with the transport mode -> `VoiceReceiver` -> 16 kHz mono PCM per speaker, compared with the source.

The DAVE group is real (tests/support/voice_sender.py: a local external sender signs the MLS proposals,
the bot's davey session commits, the speakers' sessions join by Welcome), so `decrypt` runs on frames
that `encrypt_opus` of another member produced.
"""
from __future__ import annotations

import asyncio
import os
import random

import numpy as np
import pytest

from bot_client.discord_receive import DiscordVoiceTap, ReceiveWorker
from bot_client.voice_receive import OUT_FRAME_BYTES, DaveGate, ReceiveConfig, VoiceReceiver
from bot_client.voice_rtp import AES_GCM, XCHACHA, PacketError, TransportCipher, parse_rtp
from tests.support.voice_sender import DaveGroup, Speaker, resample_to_16k_mono, speech_48k

CHANNEL = 927310423890473011
BOT, ANN, BEN = 1001, 2002, 3003
ANN_SSRC, BEN_SSRC = 111, 222


@pytest.fixture(scope="module")
def sentences():
    return {
        ANN: speech_48k("Hello Miku, what is the weather like on the moon today?"),
        BEN: speech_48k("Please sing me a song about green onions.", voice="en-gb"),
    }


class Heard:
    def __init__(self) -> None:
        self.audio: dict[int, bytearray] = {}
        self.started: list[int] = []
        self.left: list[int] = []

    def on_audio(self, user_id: int, pcm: bytes) -> None:
        self.audio.setdefault(user_id, bytearray()).extend(pcm)

    def samples(self, user_id: int) -> np.ndarray:
        return np.frombuffer(bytes(self.audio.get(user_id, b"")), dtype="<i2").astype(np.float32) / 32768.0


def similarity(heard: np.ndarray, source48: np.ndarray) -> float:
    """Correlation of the heard audio with the source at their best alignment (the resampler delays a little)."""
    reference = resample_to_16k_mono(source48)
    n = min(len(heard), len(reference))
    assert n > 16000 * 0.5, f"only {len(heard)} samples heard"
    size = 1 << (2 * n - 1).bit_length()
    cross = np.fft.irfft(np.fft.rfft(heard[:n], size) * np.conj(np.fft.rfft(reference[:n], size)), size)
    lag = int(np.argmax(cross[:800]))  # heard lags the source by the resampler's delay (< 50 ms)
    a, b = heard[lag:n], reference[: n - lag]
    return float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 else 0.0


def setup(mode=XCHACHA, *, dave=True, config=ReceiveConfig(), speakers=(ANN,)):
    key = os.urandom(32)
    group = DaveGroup(CHANNEL, BOT) if dave else None
    if group is not None:
        group.add(*speakers)
    heard = Heard()
    receiver = VoiceReceiver(on_audio=heard.on_audio, on_speaker=heard.started.append,
                             on_speaker_left=heard.left.append, config=config,
                             dave=DaveGate(lambda: group.bot) if group is not None else None)
    receiver.set_key(mode, key)
    senders = {user: Speaker(ssrc, TransportCipher(mode, key), group.members[user] if group else None)
               for user, ssrc in ((ANN, ANN_SSRC), (BEN, BEN_SSRC)) if user in speakers}
    return receiver, heard, senders, group


def play(receiver, datagrams, now=0.0, *, tail_s=1.2):
    """Feed datagrams 20 ms apart on the injected clock, ticking as the worker does, then let silence pass."""
    for datagram in datagrams:
        receiver.feed(datagram, now)
        now += 0.02
        receiver.tick(now)
    for _ in range(int(tail_s / 0.02)):
        now += 0.02
        receiver.tick(now)
    return now


@pytest.mark.parametrize("mode", [XCHACHA, AES_GCM])
def test_a_sentence_through_transport_and_dave_encryption_comes_out_as_the_same_speech(sentences, mode):
    receiver, heard, senders, group = setup(mode)
    receiver.map_ssrc(ANN_SSRC, ANN)
    packets = senders[ANN].packets(sentences[ANN])
    play(receiver, packets)
    stats = receiver.stats
    assert stats.transport_failures == stats.dave_failures == stats.opus_failures == 0
    assert stats.frames_decoded == len(packets) and stats.silence_packets == 5
    assert heard.started == [ANN]
    # 16 kHz mono: the utterance's length, plus the real-time silence that lets the VAD end the turn.
    speech_s = len(sentences[ANN]) / 48000
    assert len(heard.audio[ANN]) % 2 == 0
    assert len(heard.samples(ANN)) >= int(16000 * (speech_s + 0.1 + 0.8))
    assert similarity(heard.samples(ANN), sentences[ANN]) > 0.95
    # The trailing fill is silence.
    assert np.abs(heard.samples(ANN)[-8000:]).max() < 0.01


def test_the_dave_layer_is_really_on(sentences):
    """The bot's session decrypts another member's frames; a frame sealed without DAVE is refused, counted."""
    receiver, heard, senders, group = setup()
    receiver.map_ssrc(ANN_SSRC, ANN)
    opus = senders[ANN].opus_frames(sentences[ANN][:960 * 10])
    encrypted = group.members[ANN].encrypt_opus(opus[0])
    assert encrypted != opus[0] and group.bot.decrypt(ANN, __import__("davey").MediaType.audio, encrypted) == opus[0]
    plain = Speaker(ANN_SSRC, senders[ANN].cipher, dave=None, sequence=500)
    play(receiver, [plain.packet(frame) for frame in opus[1:4]], tail_s=0.1)
    assert receiver.stats.dave_failures == 3 and receiver.stats.frames_decoded == 0
    assert ANN not in heard.audio  # nothing we cannot hear starts a stream
    # During a DAVE transition (an upgrade, or a downgrade to protocol 0) discord.py switches the session
    # to passthrough: then unencrypted frames are let through, and heard.
    group.bot.set_passthrough_mode(True, 10)
    play(receiver, [plain.packet(frame) for frame in opus[4:10]], tail_s=0.1)
    assert receiver.stats.dave_failures == 3 and receiver.stats.frames_decoded == 6 and heard.audio[ANN]


def test_lost_packets_are_concealed_and_keep_the_timeline(sentences):
    receiver, heard, senders, _ = setup()
    receiver.map_ssrc(ANN_SSRC, ANN)
    packets = senders[ANN].packets(sentences[ANN])
    rng = random.Random(7)
    lost = {i for i in range(5, len(packets) - 10) if rng.random() < 0.08}
    lost |= {40, 41, 42}  # a burst
    play(receiver, [p for i, p in enumerate(packets) if i not in lost])
    stats = receiver.stats
    assert stats.lost == len(lost)
    assert stats.fec_recovered >= 1 and stats.concealed_frames >= 2
    assert stats.fec_recovered + stats.concealed_frames == len(lost)
    full = TestTimeline.expected_samples(len(packets))
    assert abs(len(heard.samples(ANN)) - full) <= 2 * 320 + 16000  # every lost frame filled, +- the silence fill
    assert similarity(heard.samples(ANN), sentences[ANN]) > 0.8


class TestTimeline:
    @staticmethod
    def expected_samples(frames: int) -> int:
        return frames * 320 + 50 * 320


def test_reordered_packets_play_in_order(sentences):
    receiver, heard, senders, _ = setup()
    receiver.map_ssrc(ANN_SSRC, ANN)
    packets = senders[ANN].packets(sentences[ANN])
    shuffled = list(packets)
    for i in range(10, len(shuffled) - 10, 7):  # swap neighbours, and move one two places later
        shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
    shuffled.insert(59, shuffled.pop(57))
    play(receiver, shuffled)
    stats = receiver.stats
    assert stats.reordered >= 10 and stats.lost == 0 and stats.late_or_duplicate == 0
    assert stats.frames_decoded == len(packets)
    assert similarity(heard.samples(ANN), sentences[ANN]) > 0.95


def test_a_packet_later_than_the_jitter_window_is_dropped_not_played_twice(sentences):
    receiver, heard, senders, _ = setup(config=ReceiveConfig(reorder_depth=3))
    receiver.map_ssrc(ANN_SSRC, ANN)
    packets = senders[ANN].packets(sentences[ANN][:960 * 40], silence_tail=0)
    late = packets.pop(10)
    packets.insert(20, late)  # ten packets late: the gap was concealed long before
    packets.append(packets[5])  # and a duplicate
    play(receiver, packets, tail_s=0.1)
    assert receiver.stats.lost == 1 and receiver.stats.late_or_duplicate == 2


def test_two_interleaved_speakers_get_two_streams(sentences):
    receiver, heard, senders, _ = setup(speakers=(ANN, BEN))
    receiver.map_ssrc(ANN_SSRC, ANN)
    receiver.map_ssrc(BEN_SSRC, BEN)
    a = senders[ANN].packets(sentences[ANN])
    b = senders[BEN].packets(sentences[BEN])
    mixed = []
    for i in range(max(len(a), len(b))):
        mixed += [p[i] for p in (a, b) if i < len(p)]
    now = 0.0
    for i in range(0, len(mixed), 2):  # both speak at once: two datagrams per 20 ms
        for datagram in mixed[i:i + 2]:
            receiver.feed(datagram, now)
        now += 0.02
        receiver.tick(now)
    for _ in range(60):
        now += 0.02
        receiver.tick(now)
    assert sorted(heard.started) == [ANN, BEN]
    assert similarity(heard.samples(ANN), sentences[ANN]) > 0.95
    assert similarity(heard.samples(BEN), sentences[BEN]) > 0.95
    # Nothing of one speaker leaks into the other's stream.
    assert similarity(heard.samples(BEN), sentences[ANN]) < 0.3


def test_unknown_ssrc_is_held_until_the_speaking_op_then_heard(sentences):
    receiver, heard, senders, _ = setup()
    packets = senders[ANN].packets(sentences[ANN])
    now = 0.0
    for datagram in packets[:10]:
        receiver.feed(datagram, now)
        now += 0.02
    assert receiver.stats.unknown_ssrc == 10 and not heard.audio
    receiver.map_ssrc(ANN_SSRC, ANN)  # the SPEAKING op arrives
    assert len(heard.audio[ANN]) >= 9 * OUT_FRAME_BYTES
    play(receiver, packets[10:], now)
    assert receiver.stats.frames_decoded == len(packets)


def test_an_ssrc_never_mapped_is_dropped_and_counted(sentences):
    receiver, heard, senders, _ = setup()
    play(receiver, senders[ANN].packets(sentences[ANN][:960 * 60], silence_tail=0), tail_s=1.0)
    assert receiver.stats.unknown_ssrc == 60 and receiver.stats.unknown_ssrc_dropped == 60
    assert not heard.audio and not receiver._unknown


def test_bots_and_people_outside_the_channel_are_ignored(sentences):
    receiver, heard, senders, _ = setup()
    receiver.map_ssrc(ANN_SSRC, ANN, listen=False)
    play(receiver, senders[ANN].packets(sentences[ANN][:960 * 20]), tail_s=0.1)
    assert receiver.stats.ignored == 25 and not heard.audio and receiver.stats.frames_decoded == 0


def test_garbage_truncated_and_forged_packets_are_counted_and_hearing_goes_on(sentences):
    receiver, heard, senders, group = setup()
    receiver.map_ssrc(ANN_SSRC, ANN)
    packets = senders[ANN].packets(sentences[ANN])
    rng = random.Random(3)
    good = packets[20]
    bad = [
        b"", b"\x80", bytes(74),  # empty, one byte, an IP discovery reply
        bytes([0x80, 0xC8]) + os.urandom(30),  # RTCP
        bytes(rng.randrange(256) for _ in range(200)),  # noise
        good[:14],  # truncated below a payload
        good[:-9] + bytes(5) + good[-4:],  # tail damaged: the transport tag fails
        good[:12] + bytes([good[12] ^ 1]) + good[13:],  # one flipped bit
        bytes([0x90]) + good[1:12] + b"\xbe\xde\xff\xff" + good[12:],  # an extension longer than the packet
    ]
    # Valid transport and DAVE encryption around bytes that are not Opus, in place of packet 21.
    garbage_opus = Speaker(ANN_SSRC, senders[ANN].cipher, group.members[ANN], sequence=21)
    # A stray packet with a wild sequence number does not derail the stream either.
    bad.append(senders[ANN].cipher.seal(9999, 0, ANN_SSRC, packets[5][12:20]))
    now = play(receiver, packets[:21], tail_s=0.0)
    for datagram in bad:  # a burst of junk between two packets
        receiver.feed(datagram, now)
    stream = [garbage_opus.packet(b"\x0b" + os.urandom(3))] + packets[22:]
    play(receiver, stream, now)
    stats = receiver.stats
    assert stats.malformed >= 4 and stats.transport_failures >= 2 and stats.rtcp == 1
    assert stats.opus_failures + stats.dave_failures >= 1 and stats.resets == 0
    assert stats.frames_decoded >= len(packets) - 2
    assert similarity(heard.samples(ANN), sentences[ANN]) > 0.8


def test_a_dave_epoch_change_mid_speech_keeps_the_speech(sentences):
    """Ben joins while Ann speaks: the group moves to epoch 2 and Ann's session to new keys mid-sentence."""
    receiver, heard, senders, group = setup()
    receiver.map_ssrc(ANN_SSRC, ANN)
    packets = senders[ANN].packets(sentences[ANN])
    half = len(packets) // 2
    first = packets[:half]
    assert group.bot.epoch == 1
    now = play(receiver, first, tail_s=0.0)
    group.add(BEN)
    assert group.bot.epoch == 2 and group.members[ANN].epoch == 2
    # The rest is encrypted under the new epoch's keys, by the same speaker's session.
    rest = [senders[ANN].packet(frame) for frame in senders[ANN].opus_frames(sentences[ANN][half * 960:])]
    play(receiver, rest, now)
    assert receiver.stats.dave_failures == 0
    assert receiver.stats.frames_decoded == half + len(rest)


def test_a_dave_session_reset_mid_speech_is_counted_and_the_session_goes_on(sentences):
    """discord.py re-initialises the session (a new group): frames under keys it no longer has are refused,
    concealed and counted; once the speaker is in the new group, they are heard again."""
    receiver, heard, senders, group = setup()
    receiver.map_ssrc(ANN_SSRC, ANN)
    packets = senders[ANN].packets(sentences[ANN], silence_tail=0)
    now = play(receiver, packets[:40], tail_s=0.0)
    new_group = DaveGroup(CHANNEL, BOT)  # the bot's session is replaced
    group.bot = new_group.bot
    now = play(receiver, packets[40:50], now, tail_s=0.0)
    assert receiver.stats.dave_failures == 10
    new_group.add(ANN)
    group.bot = new_group.bot
    senders[ANN].dave = new_group.members[ANN]
    rest = [senders[ANN].packet(f) for f in senders[ANN].opus_frames(sentences[ANN][50 * 960:])]
    play(receiver, rest, now)
    assert receiver.stats.dave_failures == 10 and receiver.stats.frames_decoded == 40 + len(rest)


def test_without_dave_frames_are_plain_opus(sentences):
    receiver, heard, senders, _ = setup(dave=False)
    receiver.map_ssrc(ANN_SSRC, ANN)
    play(receiver, senders[ANN].packets(sentences[ANN]))
    assert similarity(heard.samples(ANN), sentences[ANN]) > 0.95


def test_a_speaker_leaving_ends_their_stream(sentences):
    receiver, heard, senders, _ = setup()
    receiver.map_ssrc(ANN_SSRC, ANN)
    packets = senders[ANN].packets(sentences[ANN])
    now = play(receiver, packets[:30], tail_s=0.0)
    assert receiver.remove_user(ANN) and heard.left == [ANN]
    before = len(heard.audio[ANN])
    play(receiver, packets[30:40], now, tail_s=0.5)
    assert len(heard.audio[ANN]) == before  # no stream, no silence fill: the SSRC is unknown again
    assert receiver.stats.unknown_ssrc == 10
    assert not receiver.remove_user(ANN)  # twice: nothing to do


def test_a_sender_restart_resets_the_stream_without_concealing_the_jump(sentences):
    receiver, heard, senders, _ = setup()
    receiver.map_ssrc(ANN_SSRC, ANN)
    packets = senders[ANN].packets(sentences[ANN][:960 * 20], silence_tail=0)
    senders[ANN].sequence += 30000
    packets += senders[ANN].packets(sentences[ANN][:960 * 20], silence_tail=0)
    play(receiver, packets, tail_s=0.1)
    assert receiver.stats.resets == 1 and receiver.stats.concealed_frames == 0
    assert receiver.stats.frames_decoded == 40


def test_rtp_parsing_refuses_what_is_not_rtp():
    cipher = TransportCipher(XCHACHA, bytes(32))
    packet = parse_rtp(cipher.seal(7, 960, 55, b"opus", extension=b"\x10\xaa\x00\x00"))
    assert (packet.sequence, packet.timestamp, packet.ssrc, packet.extension_words) == (7, 960, 55, 1)
    assert cipher.open(packet) == b"opus"  # the extension's values are not part of the frame
    for data in (b"", bytes(15), bytes([0x40]) + bytes(20), bytes([0x80, 0xC9]) + bytes(20)):
        with pytest.raises(PacketError):
            parse_rtp(data)
    with pytest.raises(ValueError):
        TransportCipher("xsalsa20_poly1305", bytes(32))
    with pytest.raises(ValueError):
        TransportCipher(XCHACHA, bytes(16))


def test_the_tap_on_a_real_discord_py_voice_connection_over_udp(sentences):
    """discord.py's own VoiceClient and VoiceConnectionState: its socket reader thread reads real UDP
    datagrams and hands them to the tap; its DiscordVoiceWebSocket runs the tap's hook on op 5 and op 13;
    the DAVE step uses the connection's davey session, as on a live connection."""
    import socket

    import discord
    from discord.gateway import DiscordVoiceWebSocket

    from bot_client.discord_receive import dave_gate

    key = os.urandom(32)
    group = DaveGroup(CHANNEL, BOT)
    group.add(ANN)
    heard = Heard()
    voice_client = discord.VoiceClient(discord.Client(intents=discord.Intents.none()), object())
    connection = voice_client._connection
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    connection.socket = udp
    connection._socket_reader.resume()  # what VoiceConnectionState._create_socket does with a new socket
    connection.mode, connection.secret_key = XCHACHA, list(key)
    connection.dave_session, connection.dave_protocol_version = group.bot, 1
    receiver = VoiceReceiver(on_audio=heard.on_audio, dave=dave_gate(voice_client))
    tap = DiscordVoiceTap(voice_client, receiver, listens_to=lambda user_id: user_id == ANN)
    packets = Speaker(ANN_SSRC, TransportCipher(XCHACHA, key), group.members[ANN]).packets(sentences[ANN])

    async def scenario():
        tap.start()  # the key comes from the connection, and the listener from now on gets every datagram
        assert connection.hook == tap._hook
        ws = DiscordVoiceWebSocket(None, asyncio.get_running_loop(), hook=connection.hook)  # as discord.py opens it
        ws._connection = connection
        await ws.received_message({"op": 5, "d": {"user_id": str(ANN), "ssrc": ANN_SSRC, "speaking": 1}})
        await ws.received_message({"op": 5, "d": {"user_id": "4242", "ssrc": 999, "speaking": 1}})  # a bot
        assert receiver.users() == {ANN_SSRC: ANN, 999: 4242}
        loop = asyncio.get_running_loop()
        for i, datagram in enumerate(packets):
            sender.sendto(datagram, udp.getsockname())
            if i % 10 == 9:  # paced a little, so the socket's buffer never overflows
                deadline = loop.time() + 30
                while tap.worker.processed < i + 1 and loop.time() < deadline:
                    await asyncio.sleep(0.01)
        deadline = loop.time() + 30
        while tap.worker.processed < len(packets) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await ws.received_message({"op": 13, "d": {"user_id": str(ANN)}})
        tap.stop()

    try:
        asyncio.run(scenario())
    finally:
        connection._socket_reader.stop()
        udp.close()
        sender.close()
    assert connection.hook is None and tap.worker.processed == len(packets)
    assert receiver.stats.frames_decoded == len(packets) and receiver.stats.dave_failures == 0
    assert receiver.users() == {999: 4242}
    assert similarity(heard.samples(ANN), sentences[ANN]) > 0.95


def test_a_member_whose_speaking_op_came_before_they_joined_is_heard_once_they_are_in(sentences):
    """op 5 (voice WebSocket) may arrive before the gateway's voice state: the tap decides again on join."""
    receiver, heard, senders, _ = setup()
    in_channel: set[int] = set()

    class VoiceClient:
        class _connection:
            hook = None

    tap = DiscordVoiceTap(VoiceClient(), receiver, listens_to=in_channel.__contains__)
    tap.on_voice_message({"op": 5, "d": {"user_id": str(ANN), "ssrc": ANN_SSRC, "speaking": 1}})
    packets = senders[ANN].packets(sentences[ANN])
    now = play(receiver, packets[:10], tail_s=0.0)
    assert receiver.stats.ignored == 10 and not heard.audio
    in_channel.add(ANN)
    tap.refresh(ANN)
    play(receiver, packets[10:], now)
    assert heard.started == [ANN] and receiver.stats.frames_decoded == len(packets) - 10
