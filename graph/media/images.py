"""Image bytes that can be trusted: a size limit, a pixel limit checked from the header before any
decoding (Pillow's decompression-bomb guard made strict), and re-encoding to PNG or JPEG.

Used on both sides: what a backend returns must really be an image (a model server that answers with an
HTML error page or JSON is a clear error, never a broken upload), and what people post is checked before
a model sees it.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError


class BadImage(ValueError):
    """Bytes that are not an acceptable image; the message says why in words a user understands."""


@dataclass(frozen=True, kw_only=True)
class ImageLimits:
    max_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000  # width x height, checked from the header before decoding

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError("image limits must be positive")


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    """A Pillow image whose size and pixel count are within `limits`, not yet decoded (lazy)."""
    if len(data) > limits.max_bytes:
        raise BadImage(f"the image is {_mib(len(data))}, over the {_mib(limits.max_bytes)} limit")
    if not data:
        raise BadImage("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImage(f"the image claims more pixels than the {limits.max_pixels:,} pixel limit "
                       "(a decompression bomb?); it was not opened") from None
    except UnidentifiedImageError:
        raise BadImage(f"not an image (starts with {data[:16]!r})") from None
    except Exception as error:  # noqa: BLE001 - any failure to parse the header is a broken image
        raise BadImage(f"a broken image ({type(error).__name__}: {error})") from None
    width, height = image.size
    if width <= 0 or height <= 0 or width * height > limits.max_pixels:
        raise BadImage(
            f"the image is {width}x{height} pixels, over the {limits.max_pixels:,} pixel limit (a decompression bomb?)"
        )
    return image


def _decoded(image: Image.Image) -> Image.Image:
    try:
        image.load()
    except Exception as error:  # noqa: BLE001 - truncated or corrupt data
        raise BadImage(f"a broken image: it does not decode ({type(error).__name__}: {error})") from None
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() or image.mode == "P" else "RGB")
    return image


def to_png(data: bytes, limits: ImageLimits) -> tuple[bytes, int, int]:
    """Check `data`, decode it fully and re-encode it as PNG: (png bytes, width, height)."""
    image = _decoded(open_checked(data, limits))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue(), image.width, image.height


def to_jpeg(image: Image.Image, max_side: int, quality: int = 85) -> bytes:
    """A decoded image scaled to fit `max_side` and encoded as JPEG (what a vision model is sent)."""
    image = _decoded(image)
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    if image.mode != "RGB":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A") if "A" in image.getbands() else None)
        image = background
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
