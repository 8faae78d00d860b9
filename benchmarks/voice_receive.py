"""What hearing costs the bot: the receive path per 20 ms packet, side by side in one run.

Variants on the same espeak-ng sentences, with real packets (libopus, a real local DAVE group, RTP sealed
with the transport mode): xchacha20 + DAVE (what discord.py negotiates), AES-256-GCM + DAVE, xchacha20
without DAVE, and xchacha20 + DAVE with 10 % of the packets lost and some reordered (FEC and
concealment at work). Each reports the time per packet (p50/p95) and the CPU share for 1 and 4 people
talking at once (a packet every 20 ms each). A breakdown times each layer alone on the same packets.

    PYTHONPATH=. python benchmarks/voice_receive.py [--repeats 3]

The JSON summary is the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.stats import summary_ms  # noqa: E402
from bot_client.voice_receive import DaveGate, VoiceReceiver  # noqa: E402
from bot_client.voice_rtp import AES_GCM, XCHACHA, TransportCipher, parse_rtp  # noqa: E402
from tests.support.voice_sender import DaveGroup, Speaker, speech_48k  # noqa: E402

CHANNEL, BOT, USER, SSRC = 4242, 1, 2, 77
SENTENCES = ("Hello Miku, what is the weather like on the moon today?",
             "Please sing me a song about green onions and the city at night.")


def packets_for(mode: str, dave: bool, key: bytes, speech) -> tuple[list[bytes], DaveGroup | None]:
    group = DaveGroup(CHANNEL, BOT) if dave else None
    if group is not None:
        group.add(USER)
    speaker = Speaker(SSRC, TransportCipher(mode, key), group.members[USER] if group else None)
    out: list[bytes] = []
    for pcm in speech:
        out += speaker.packets(pcm)
    return out, group


def lossy(packets: list[bytes]) -> list[bytes]:
    """10 % lost, and a neighbour swap every 9 packets."""
    rng = random.Random(1)
    kept = [p for p in packets if rng.random() >= 0.10]
    for i in range(5, len(kept) - 1, 9):
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return kept


def run_variant(mode: str, dave: bool, damaged: bool, key: bytes, speech, repeats: int) -> tuple[list[float], dict]:
    per_packet_ms: list[float] = []
    counters: dict = {}
    for _ in range(repeats):
        # Fresh packets and a fresh group each time: DAVE refuses a replayed frame (as it should).
        packets, group = packets_for(mode, dave, key, speech)
        if damaged:
            packets = lossy(packets)
        receiver = VoiceReceiver(on_audio=lambda user, pcm: None,
                                 dave=DaveGate(lambda: group.bot) if group is not None else None)
        receiver.set_key(mode, key)
        receiver.map_ssrc(SSRC, USER)
        now = 0.0
        for datagram in packets:
            start = time.perf_counter()
            receiver.feed(datagram, now)
            receiver.tick(now)
            per_packet_ms.append((time.perf_counter() - start) * 1000.0)
            now += 0.02
        counters = {k: v for k, v in receiver.stats.as_dict().items() if v and k in (
            "dave_failures", "lost", "fec_recovered", "concealed_frames", "reordered", "frames_decoded")}
    return per_packet_ms, counters


def breakdown(packets: list[bytes], key: bytes, group: DaveGroup) -> dict:
    import davey
    import discord.opus
    import numpy as np
    import soxr

    cipher = TransportCipher(XCHACHA, key)
    parsed = [parse_rtp(p) for p in packets]
    t0 = time.perf_counter()
    frames = [cipher.open(p) for p in parsed]
    t1 = time.perf_counter()
    opus = [group.bot.decrypt(USER, davey.MediaType.audio, f) for f in frames]
    t2 = time.perf_counter()
    decoder = discord.opus.Decoder()
    pcm = [decoder.decode(o, fec=False) for o in opus]
    t3 = time.perf_counter()
    stream = soxr.ResampleStream(48000, 16000, 1, dtype="int16", quality="HQ")
    for p in pcm:
        stereo = np.frombuffer(p, dtype="<i2").reshape(-1, 2).astype(np.int32)
        stream.resample_chunk(((stereo[:, 0] + stereo[:, 1]) // 2).astype(np.int16))
    t4 = time.perf_counter()
    n = len(packets)
    return {"transport_us": round((t1 - t0) / n * 1e6, 1), "dave_us": round((t2 - t1) / n * 1e6, 1),
            "opus_us": round((t3 - t2) / n * 1e6, 1), "downmix_resample_us": round((t4 - t3) / n * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import discord.opus

    if not discord.opus.is_loaded():
        discord.opus._load_default()
    key = os.urandom(32)
    speech = [speech_48k(text) for text in SENTENCES]
    results: dict[str, dict] = {}
    variants = (("xchacha_dave", XCHACHA, True, False), ("aes_gcm_dave", AES_GCM, True, False),
                ("xchacha_plain", XCHACHA, False, False), ("xchacha_dave_lossy", XCHACHA, True, True))
    for name, mode, dave, damaged in variants:
        timings, counters = run_variant(mode, dave, damaged, key, speech, args.repeats)
        stats = summary_ms(timings, 4)
        mean_ms = sum(timings) / len(timings)
        stats["cpu_share_1_speaker_pct"] = round(mean_ms / 20.0 * 100, 2)
        stats["cpu_share_4_speakers_pct"] = round(4 * mean_ms / 20.0 * 100, 2)
        stats["last_run"] = counters
        results[name] = stats
        print(f"{name:22s} p50 {stats['p50_ms']:.3f} ms  p95 {stats['p95_ms']:.3f} ms  "
              f"CPU {stats['cpu_share_1_speaker_pct']}% (1 speaker), {stats['cpu_share_4_speakers_pct']}% (4)  {counters}")
    packets, group = packets_for(XCHACHA, True, key, speech)
    results["breakdown_per_packet"] = breakdown(packets, key, group)
    print("breakdown:", results["breakdown_per_packet"])
    print(json.dumps({"benchmark": "voice_receive", "packets_per_variant": len(packets), **results}))


if __name__ == "__main__":
    main()
