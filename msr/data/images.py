"""Opening a training image with its size bounded before anything is decoded.

PIL reads only the header on `Image.open`; the size it declares is checked against two limits
before the pixels are decoded: the pixels the image needs once it is made square (padding to
max(W, H)² for `aspect="pad"`, W·H for `"crop"`) and its aspect ratio. A file that breaks a limit,
or fails to decode for any reason, is an `ImageSkip` whose message names the file and the limit,
which the callers count as a skip. A 436-byte PNG of 60000×2 pixels would otherwise ask for 10.8 GB
once padded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# 8192² (67 MP): a 4K photo and most panoramas pass; the decoded RGB array stays under 200 MB
MAX_PIXELS = 8192 * 8192
MAX_ASPECT = 20.0  # 20:1; LLaVA pads to a square, so a 60000×2 strip is all padding anyway


class ImageSkip(ValueError):
    """An image that cannot be used; the message is the skip reason (`missing image: …`)."""


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = MAX_PIXELS
    max_aspect: float = MAX_ASPECT

    def check(self, size: tuple[int, int], path: Path, aspect: str = "pad") -> None:
        """Raise `ImageSkip` when an image of `size` (W, H) breaks a limit."""
        w, h = size
        if w < 1 or h < 1:
            raise ImageSkip(f"unreadable image: {path} (declares {w}×{h} pixels)")
        ratio = max(w, h) / min(w, h)
        if ratio > self.max_aspect:
            raise ImageSkip(
                f"image aspect ratio: {path} is {w}×{h} ({ratio:.0f}:1), more than "
                f"data.max_image_aspect={self.max_aspect:g}"
            )
        need = max(w, h) ** 2 if aspect == "pad" else w * h
        if need > self.max_pixels:
            what = f"{max(w, h)}² once padded to a square" if aspect == "pad" else f"{w}×{h}"
            raise ImageSkip(
                f"image too large: {path} is {w}×{h}, {what} = {need / 1e6:.0f} MP, more than "
                f"data.max_image_pixels={self.max_pixels} ({self.max_pixels / 1e6:.0f} MP)"
            )


DEFAULT_LIMITS = ImageLimits()


def open_image(path: Path, limits: ImageLimits, aspect: str = "pad") -> Image.Image:
    """The decoded image at `path` (in its own mode), or `ImageSkip` naming why not."""
    if path.is_dir():
        raise ImageSkip(f"missing image: {path} is a folder")
    return _decoded(path, str(path), limits, aspect)


def open_bytes(data: bytes, name: str, limits: ImageLimits, aspect: str = "pad") -> Image.Image:
    """An image from bytes (a benchmark that embeds its images), checked as `open_image` does."""
    return _decoded(io.BytesIO(data), name, limits, aspect)


def _decoded(source: Path | io.BytesIO, name: str, limits: ImageLimits, aspect: str) -> Image.Image:
    try:
        with warnings.catch_warnings():  # our own limit decides, not PIL's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
    except FileNotFoundError:
        raise ImageSkip(f"missing image: {name}") from None
    except Image.DecompressionBombError as err:  # beyond PIL's own hard limit (179 MP)
        raise ImageSkip(f"image too large: {name} ({err})") from None
    except Exception as err:
        raise ImageSkip(f"unreadable image: {name} ({type(err).__name__}: {err})") from None
    try:
        limits.check(img.size, Path(name), aspect)
        img.load()  # a single-frame file opened by name is closed here by PIL itself
    except ImageSkip:
        img.close()
        raise
    except MemoryError:
        img.close()
        w, h = img.size
        raise ImageSkip(f"image too large: {name} ({w}×{h}: out of memory decoding it)") from None
    except Exception as err:
        img.close()
        raise ImageSkip(f"unreadable image: {name} ({type(err).__name__}: {err})") from None
    return img


def check_header(path: Path, limits: ImageLimits, aspect: str = "pad") -> None:
    """The file exists, its header parses and its size is within the limits (no decode)."""
    if not path.is_file():
        raise ImageSkip(f"missing image: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                size = img.size
    except Image.DecompressionBombError as err:
        raise ImageSkip(f"image too large: {path} ({err})") from None
    except Exception as err:
        raise ImageSkip(f"unreadable image: {path} ({type(err).__name__}: {err})") from None
    limits.check(size, path, aspect)
