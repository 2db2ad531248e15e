"""Turn the bytes of one photo into what is sent to the model, and estimate what it will cost.

`prepare_image` checks the header before anything is decoded (empty files, non-images, decompression
bombs), lets libjpeg decode large JPEGs at reduced scale, applies the EXIF orientation, shrinks the
picture to the largest size the chosen model actually looks at, and re-encodes it as JPEG (or keeps a
plain PNG lossless). Re-encoding also strips metadata such as GPS positions.

Everything here is synchronous and CPU-bound: the pipeline runs it in a worker thread. Pillow is only
imported inside functions so that `image-analyzer --help` stays fast.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .domain import ImageRef, PreparedImage
from .errors import ImageAnalyzerError

if TYPE_CHECKING:
    from PIL import Image as PILImage

DEFAULT_MAX_PIXELS = 50_000_000
MAX_OUTPUT_BYTES = 20_000_000
"""The OpenAI limit for one image is 20 MB; stay under it with a little margin."""
JPEG_QUALITY = 85
LOW_DETAIL_SIDE = 512

# Formats decoded and re-encoded. Anything else Pillow can identify is named in the rejection.
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF"})
# Formats tried when identifying bytes: the accepted ones plus a few with unmistakable magic numbers,
# so that a mislabelled file gets a precise reason. Formats without magic numbers (TGA...) are left out:
# they would claim random bytes.
_IDENTIFY_FORMATS = (
    "JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "ICO", "PSD", "JPEG2000", "PPM", "QOI",
)  # fmt: skip
_LOSSLESS_PNG_MODES = frozenset({"RGB", "RGBA", "L"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112


class ImageRejected(ImageAnalyzerError):
    """This one image cannot be used. `reason` is short and goes into the run summary as the skip reason."""

    def __init__(self, reason: str, *, location: str | None = None) -> None:
        super().__init__(f"{location}: {reason}" if location else reason)
        self.reason = reason
        self.location = location


# --- what each model looks at ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VisionProfile:
    """How a model family sizes and bills an image.

    `tile`: the image is fitted in 2048x2048, its shortest side scaled to 768, and it costs
    `base + per_tile * tiles` (512 px tiles); `detail: low` costs `base`.
    `patch`: the image is covered by 32 px patches, at most 1536 (scaled down to fit), and each patch
    costs `multiplier` tokens.
    """

    kind: Literal["tile", "patch"]
    base: int = 0
    per_tile: int = 0
    multiplier: float = 1.0


def _tile(base: int, per_tile: int) -> VisionProfile:
    return VisionProfile("tile", base=base, per_tile=per_tile)


def _patch(multiplier: float) -> VisionProfile:
    return VisionProfile("patch", multiplier=multiplier)


# Source: OpenAI platform docs, "Images and vision" -> "Calculating costs" (image token tables for the
# tile and the 32 px patch model families), checked 2025. Keys match a model name and its dated or
# suffixed variants (`gpt-4o-2024-08-06`, `openai/gpt-4.1-mini`); the longest key wins.
VISION_PROFILES: dict[str, VisionProfile] = {
    "gpt-4o": _tile(85, 170),
    "gpt-4.1": _tile(85, 170),
    "gpt-4.5": _tile(85, 170),
    "gpt-4o-mini": _tile(2833, 5667),
    "gpt-5": _tile(70, 140),
    "o1": _tile(75, 150),
    "o3": _tile(75, 150),
    "computer-use-preview": _tile(65, 129),
    "gpt-4.1-mini": _patch(1.62),
    "gpt-4.1-nano": _patch(2.46),
    "gpt-5-mini": _patch(1.62),
    "gpt-5-nano": _patch(2.46),
    "o4-mini": _patch(1.72),
}
UNKNOWN_MODEL_PROFILE = _tile(85, 170)
"""OpenAI-compatible servers with other models: assume the gpt-4o sizing, the most common one."""

TILE_FIT_SIDE = 2048
TILE_SHORT_SIDE = 768
TILE_SIDE = 512
PATCH_SIDE = 32
PATCH_CAP = 1536


def vision_profile(model: str) -> VisionProfile:
    """The sizing/billing profile for `model`; unknown names get the gpt-4o profile."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    best: str | None = None
    for key in VISION_PROFILES:
        matches = name == key or (name.startswith(key) and name[len(key)] in "-._:@")
        if matches and (best is None or len(key) > len(best)):
            best = key
    return VISION_PROFILES[best] if best else UNKNOWN_MODEL_PROFILE


def _fit(width: int, height: int, limit: int) -> tuple[int, int]:
    longest = max(width, height)
    if longest <= limit:
        return width, height
    scale = limit / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _tile_model_size(width: int, height: int) -> tuple[int, int]:
    width, height = _fit(width, height, TILE_FIT_SIDE)
    shortest = min(width, height)
    if shortest <= TILE_SHORT_SIDE:
        return width, height
    scale = TILE_SHORT_SIDE / shortest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _patches(width: int, height: int) -> int:
    return math.ceil(width / PATCH_SIDE) * math.ceil(height / PATCH_SIDE)


def _patch_model_size(width: int, height: int) -> tuple[int, int]:
    if _patches(width, height) <= PATCH_CAP:
        return width, height
    # OpenAI's published procedure: shrink to the patch budget, then shrink a little more so that one
    # side is a whole number of patches. Taking the smaller of the two adjustments keeps the result
    # inside the budget whichever side decides.
    shrink = math.sqrt(PATCH_SIDE * PATCH_SIDE * PATCH_CAP / (width * height))
    patches_w = width * shrink / PATCH_SIDE
    patches_h = height * shrink / PATCH_SIDE
    shrink *= min(math.floor(patches_w) / patches_w, math.floor(patches_h) / patches_h)
    new_w, new_h = max(1, int(width * shrink)), max(1, int(height * shrink))
    while _patches(new_w, new_h) > PATCH_CAP:  # guards against float rounding only
        new_w, new_h = max(1, new_w - 1), max(1, new_h - 1)
    return new_w, new_h


def target_size(
    model: str, width: int, height: int, detail: str = "auto", max_side: int | None = None
) -> tuple[int, int]:
    """The size an image of `width` x `height` is sent at: the largest the model would use, never larger."""
    if detail == "low":
        width, height = _fit(width, height, LOW_DETAIL_SIDE)
    elif vision_profile(model).kind == "tile":
        width, height = _tile_model_size(width, height)
    else:
        width, height = _patch_model_size(width, height)
    if max_side is not None:
        width, height = _fit(width, height, max_side)
    return width, height


def estimate_image_tokens(model: str, width: int, height: int, detail: str = "auto") -> int:
    """Prompt tokens one image of this size costs with `model` (an estimate: reconcile with `usage`)."""
    profile = vision_profile(model)
    if profile.kind == "tile":
        if detail == "low":
            return profile.base
        w, h = _tile_model_size(width, height)
        tiles = math.ceil(w / TILE_SIDE) * math.ceil(h / TILE_SIDE)
        return profile.base + profile.per_tile * tiles
    # Patch models bill by size whatever the detail; a low-detail image is simply sent smaller.
    w, h = target_size(model, width, height, detail)
    return math.ceil(min(_patches(w, h), PATCH_CAP) * profile.multiplier)


# --- decoding ----------------------------------------------------------------------------------------

_pillow_lock = threading.Lock()
_pillow_ready = False


def _pillow(max_pixels: int) -> None:
    """Initialise Pillow once and point its own decompression-bomb guard at our cap.

    Our check on the header size is the real gate; Pillow's guard (it raises above twice
    `MAX_IMAGE_PIXELS`) is the second line for sizes only Pillow sees, like later GIF frames. Its
    warning for sizes between one and two caps would only repeat our rejection, so it is silenced.
    """
    global _pillow_ready
    from PIL import Image

    with _pillow_lock:
        if not _pillow_ready:
            Image.init()
            warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
            _pillow_ready = True
        Image.MAX_IMAGE_PIXELS = max_pixels


def _megapixels(pixels: int) -> str:
    value = pixels / 1_000_000
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def _bomb_reason(pixels: int | None, max_pixels: int) -> str:
    size = f"{_megapixels(pixels)} MP" if pixels is not None else "size"
    return f"decompression bomb: {size} over the {_megapixels(max_pixels)} MP cap (--max-image-pixels)"


def _pixels_from_pillow_message(exc: BaseException) -> int | None:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return int(found.group(1)) if found else None


def _open(data: bytes, max_pixels: int, location: str | None) -> PILImage.Image:
    """Identify the bytes and read only the header; reject non-images, odd formats and bombs."""
    if not data:
        raise ImageRejected("zero-byte file", location=location)
    _pillow(max_pixels)
    from PIL import Image, UnidentifiedImageError

    formats = [name for name in _IDENTIFY_FORMATS if name in Image.OPEN]
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        reason = _bomb_reason(_pixels_from_pillow_message(exc), max_pixels)
        raise ImageRejected(reason, location=location) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not an image (cannot identify)", location=location) from exc
    except Exception as exc:  # Pillow raises many types on hostile headers; all mean "unusable".
        raise ImageRejected("truncated or corrupt image", location=location) from exc
    if image.format not in ACCEPTED_FORMATS:
        raise ImageRejected(f"unsupported format {image.format}", location=location)
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise ImageRejected(_bomb_reason(pixels, max_pixels), location=location)
    return image


def probe_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int, str]:
    """(width, height, format) from the header alone, as stored (before EXIF rotation).

    Raises `ImageRejected` for the same header problems `prepare_image` rejects.
    """
    with _open(data, max_pixels, None) as image:
        return image.width, image.height, str(image.format)


def _orientation(image: PILImage.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a corrupt EXIF block must not cost us the picture
        return 1
    return value if isinstance(value, int) else 1


def _decode(
    image: PILImage.Image,
    *,
    model: str,
    detail: str,
    max_side: int | None,
    max_pixels: int,
    location: str,
) -> PILImage.Image:
    """Decode (at reduced scale when libjpeg can), orient, and return a fully loaded image."""
    from PIL import Image, ImageOps

    orientation = _orientation(image)
    swapped = orientation in _SWAPPING_ORIENTATIONS
    upright = (image.height, image.width) if swapped else (image.width, image.height)
    wanted_w, wanted_h = target_size(model, *upright, detail=detail, max_side=max_side)
    if image.format in ("JPEG", "MPO"):
        # libjpeg's DCT scaling: decode straight at 1/2..1/8 size, never below the wanted size.
        image.draft("RGB", (wanted_h, wanted_w) if swapped else (wanted_w, wanted_h))
    try:
        image.load()
        oriented = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(
            _bomb_reason(_pixels_from_pillow_message(exc), max_pixels), location=location
        ) from exc
    except Exception as exc:  # truncated data, bad Huffman tables, broken zlib streams...
        raise ImageRejected("truncated or corrupt image", location=location) from exc
    return oriented


def _to_rgb(image: PILImage.Image) -> PILImage.Image:
    """RGB for JPEG: transparency goes onto white, 16-bit grey is scaled (not clipped) to 8 bits."""
    from PIL import Image

    if image.mode in _SIXTEEN_BIT_MODES:
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def _encode(image: PILImage.Image, *, as_png: bool, icc_profile: bytes | None) -> bytes:
    buffer = io.BytesIO()
    extra = {"icc_profile": icc_profile} if icc_profile else {}
    if as_png:
        image.save(buffer, "PNG", **extra)
    else:
        image.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True, **extra)
    return buffer.getvalue()


def prepare_image(
    ref: ImageRef,
    data: bytes,
    *,
    image_id: str,
    model: str,
    detail: str = "auto",
    max_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = MAX_OUTPUT_BYTES,
) -> PreparedImage:
    """Check, orient, downscale and re-encode one image for `model`. Raises `ImageRejected`.

    The output is a PNG only when the input was a PNG in plain RGB/RGBA/L (kept lossless); everything
    else becomes an RGB JPEG. The format is decided by the bytes, never by the file extension.
    `max_bytes` is the size the encoded image must stay under (the API's per-image limit).
    """
    from PIL import Image

    location = ref.locator
    content_hash = hashlib.sha256(data).hexdigest()
    with _open(data, max_pixels, location) as source:
        as_png = source.format == "PNG" and source.mode in _LOSSLESS_PNG_MODES
        source_mode = source.mode
        icc_profile = source.info.get("icc_profile")
        image = _decode(
            source, model=model, detail=detail, max_side=max_side, max_pixels=max_pixels, location=location
        )
    try:
        if not as_png:
            image = _to_rgb(image)
        wanted = target_size(model, image.width, image.height, detail=detail, max_side=max_side)
        if wanted != image.size:
            image = image.resize(wanted, Image.Resampling.LANCZOS, reducing_gap=3.0)
        keep_profile = isinstance(icc_profile, bytes) and image.mode == source_mode
        data_out = _encode(image, as_png=as_png, icc_profile=icc_profile if keep_profile else None)
    except ImageRejected:
        raise
    except Exception as exc:  # e.g. colour modes Pillow cannot convert
        raise ImageRejected(f"cannot convert image ({type(exc).__name__})", location=location) from exc
    if len(data_out) > max_bytes:
        limit = f"{max_bytes / 1_000_000:g} MB"
        raise ImageRejected(f"over {limit} after re-encoding", location=location)
    output_format = "png" if as_png else "jpeg"
    return PreparedImage(
        ref=ref,
        image_id=image_id,
        data=data_out,
        mime=f"image/{output_format}",
        width=image.width,
        height=image.height,
        content_hash=content_hash,
        output_format=output_format,
    )
