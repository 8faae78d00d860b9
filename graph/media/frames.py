"""What a vision model is shown: a still image as one JPEG, an animated GIF or a video as a few frames
spread over it (PyAV), each within the limits on bytes, pixels and frames.

Pixel counts are checked from the header or the stream before anything is decoded (a decompression bomb
is refused unopened); a video decodes at most `max_decoded_frames` frames whatever its length claims; a
file that does not decode is "a broken GIF/video", never a crash.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from graph.media.images import BadImage, ImageLimits, open_checked, to_jpeg

VIDEO_TYPES = ("video/",)


@dataclass(frozen=True, kw_only=True)
class FrameLimits:
    max_bytes: int = 25 * 2**20
    max_pixels: int = 40_000_000
    max_frames: int = 4  # frames taken from a GIF or video
    max_decoded_frames: int = 900  # frames decoded at most to find them
    max_side: int = 1024  # longest side of what the model is sent

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_bytes, max_pixels=self.max_pixels)


def _is_moving(data: bytes, content_type: str) -> bool:
    if content_type.startswith(VIDEO_TYPES):
        return True
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return True
    # ISO media (mp4/mov) and WebM/Matroska by their magic numbers
    return data[4:8] == b"ftyp" or data[:4] == b"\x1aE\xdf\xa3"


def media_frames(data: bytes, content_type: str, limits: FrameLimits) -> list[bytes]:
    """JPEG frames to show the model, or BadImage saying what is wrong with the file."""
    if len(data) > limits.max_bytes:
        raise BadImage(f"the file is {len(data) / 2**20:.1f} MB, over the {limits.max_bytes / 2**20:.0f} MB limit")
    if not data:
        raise BadImage("the file is empty")
    if _is_moving(data, content_type):
        return _video_frames(data, limits)
    image = open_checked(data, limits.image_limits())
    return [to_jpeg(image, limits.max_side)]


def _video_frames(data: bytes, limits: FrameLimits) -> list[bytes]:
    import av

    kind = "GIF" if data[:3] == b"GIF" else "video"
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as error:  # noqa: BLE001 - PyAV raises many kinds for garbage
        raise BadImage(f"a broken {kind}: it does not open ({type(error).__name__})") from None
    try:
        streams = container.streams.video
        if not streams:
            raise BadImage(f"the {kind} has no pictures in it")
        stream = streams[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise BadImage(f"a broken {kind}: it has no picture size")
        if width * height > limits.max_pixels:
            raise BadImage(f"the {kind} is {width}x{height} pixels, over the {limits.max_pixels:,} pixel limit")
        frames, stride = [], 1
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index >= limits.max_decoded_frames:
                    break
                if frame.width * frame.height > limits.max_pixels:
                    raise BadImage(f"a frame of the {kind} is over the pixel limit")
                if index % stride:
                    continue
                frames.append(frame.to_image())
                if len(frames) >= 2 * limits.max_frames:
                    # keep an even spread over the whole file without holding every frame
                    frames, stride = frames[::2], stride * 2
        except BadImage:
            raise
        except Exception as error:  # noqa: BLE001 - a truncated or corrupt stream
            if not frames:
                raise BadImage(f"a broken {kind}: it does not decode ({type(error).__name__})") from None
        if not frames:
            raise BadImage(f"a broken {kind}: no frame decodes")
    finally:
        container.close()
    step = max(1, len(frames) // limits.max_frames)
    chosen = frames[::step][: limits.max_frames]
    return [to_jpeg(image, limits.max_side) for image in chosen]
