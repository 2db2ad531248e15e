from __future__ import annotations

import hashlib
import io
import math
import random
import struct
import subprocess
import sys
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from image_analyzer.domain import ImageRef
from image_analyzer.images import (
    ImageRejected,
    estimate_image_tokens,
    prepare_image,
    probe_image,
    target_size,
    vision_profile,
)

RED = (220, 20, 20)
BLUE = (20, 20, 220)


def ref(name: str = "photo.jpg") -> ImageRef:
    return ImageRef(property_id="p1", category="kitchen", name=name, locator=f"images/p1/kitchen/{name}")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def halves(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Left half red, right half blue: shows where the left edge went after rotation."""
    image = Image.new("RGB", size, BLUE)
    ImageDraw.Draw(image).rectangle((0, 0, size[0] // 2 - 1, size[1]), fill=RED)
    return image.convert(mode) if mode != "RGB" else image


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def close_to(pixel: object, colour: tuple[int, ...], tolerance: int = 40) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=False))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` followed by a tiny bogus IDAT: decoding it would fail."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"\x78\x9c\x03\x00")
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    image = Image.new("RGB", (4000, 3000), (90, 140, 60))
    ImageDraw.Draw(image).ellipse((1000, 500, 3000, 2500), fill=RED)
    return encode(image, "JPEG", quality=80)


# --- token estimates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "width", "height", "detail", "tokens"),
    [
        ("gpt-4o", 1024, 1024, "high", 765),
        ("gpt-4o", 2048, 4096, "high", 1105),
        ("gpt-4o", 4096, 8192, "low", 85),
        ("gpt-4o-2024-08-06", 1024, 1024, "auto", 765),
        ("gpt-4.1", 64, 64, "auto", 255),
        ("gpt-4o-mini", 1024, 1024, "high", 2833 + 4 * 5667),
        ("gpt-4o-mini", 1024, 1024, "low", 2833),
        ("gpt-5", 1024, 1024, "high", 70 + 4 * 140),
        ("gpt-5-2025-08-07", 512, 512, "low", 70),
        ("gpt-4.1-mini", 1024, 1024, "auto", math.ceil(1024 * 1.62)),
        ("gpt-4.1-mini", 1800, 2400, "auto", math.ceil(1452 * 1.62)),
        ("openai/gpt-4.1-nano", 1024, 1024, "auto", math.ceil(1024 * 2.46)),
        ("o4-mini", 20000, 100, "auto", math.ceil(400 * 2 * 1.72)),  # shrunk to 12800x64
        ("gpt-5-mini", 1024, 1024, "low", math.ceil(256 * 1.62)),
        ("gpt-5-nano", 32, 32, "auto", math.ceil(1 * 2.46)),
        ("some-local-llava", 1024, 1024, "auto", 765),
    ],
)
def test_estimate_image_tokens(model: str, width: int, height: int, detail: str, tokens: int) -> None:
    assert estimate_image_tokens(model, width, height, detail) == tokens


def test_vision_profile_picks_the_longest_matching_name() -> None:
    assert vision_profile("gpt-4o-mini-2024-07-18").base == 2833
    assert vision_profile("GPT-4o").base == 85
    assert vision_profile("gpt-4.1-mini-2025-04-14").kind == "patch"
    assert vision_profile("gpt-5-mini").multiplier == pytest.approx(1.62)
    assert vision_profile("gpt-5.1").base == 70
    assert vision_profile("gpt-4oops").base == 85  # unknown, not gpt-4o-mini or anything clever
    assert vision_profile("o4-mini").multiplier == pytest.approx(1.72)


@pytest.mark.parametrize(
    ("model", "size", "detail", "max_side", "expected"),
    [
        ("gpt-4o", (4000, 3000), "auto", None, (1024, 768)),
        ("gpt-4o", (3000, 4000), "high", None, (768, 1024)),
        ("gpt-4o", (2048, 4096), "auto", None, (768, 1536)),
        ("gpt-4o", (4000, 3000), "low", None, (512, 384)),
        ("gpt-4o", (4000, 3000), "auto", 300, (300, 225)),
        ("gpt-4o", (100, 50), "auto", None, (100, 50)),
        ("gpt-4.1-mini", (4000, 3000), "auto", None, (1408, 1056)),
        ("gpt-4.1-mini", (1800, 2400), "auto", None, (1056, 1408)),
        ("gpt-4.1-mini", (1024, 1024), "auto", None, (1024, 1024)),
        ("gpt-5-nano", (4000, 3000), "low", None, (512, 384)),
    ],
)
def test_target_size(
    model: str, size: tuple[int, int], detail: str, max_side: int | None, expected: tuple[int, int]
) -> None:
    assert target_size(model, *size, detail=detail, max_side=max_side) == expected


sides = st.integers(min_value=1, max_value=20000)


@given(sides, sides, st.sampled_from(["gpt-4o", "gpt-4.1-mini", "gpt-5-nano", "o4-mini", "gpt-4o-mini"]))
def test_sending_the_target_size_costs_the_same(width: int, height: int, model: str) -> None:
    new_w, new_h = target_size(model, width, height)
    assert new_w <= width
    assert new_h <= height
    assert estimate_image_tokens(model, new_w, new_h) == estimate_image_tokens(model, width, height)
    if vision_profile(model).kind == "patch":
        assert math.ceil(new_w / 32) * math.ceil(new_h / 32) <= 1536


# --- preparing images ----------------------------------------------------------------------------------


def test_large_jpeg_is_downscaled_for_a_tile_model(big_jpeg: bytes) -> None:
    prepared = prepare_image(ref(), big_jpeg, image_id="photo", model="gpt-4o")
    assert (prepared.width, prepared.height) == (1024, 768)
    assert prepared.mime == "image/jpeg"
    assert prepared.output_format == "jpeg"
    assert prepared.content_hash == hashlib.sha256(big_jpeg).hexdigest()
    assert prepared.image_id == "photo"
    out = decoded(prepared.data)
    assert (out.format, out.size, out.mode) == ("JPEG", (1024, 768), "RGB")
    assert close_to(out.getpixel((512, 384)), RED)
    assert len(prepared.data) < len(big_jpeg)


def test_large_jpeg_for_patch_model_low_detail_and_max_side(big_jpeg: bytes) -> None:
    patch = prepare_image(ref(), big_jpeg, image_id="a", model="gpt-4.1-mini")
    low = prepare_image(ref(), big_jpeg, image_id="a", model="gpt-4o", detail="low")
    capped = prepare_image(ref(), big_jpeg, image_id="a", model="gpt-4o", max_side=400)
    assert (patch.width, patch.height) == (1408, 1056)
    assert (low.width, low.height) == (512, 384)
    assert (capped.width, capped.height) == (400, 300)
    assert decoded(capped.data).size == (400, 300)


def test_small_images_are_never_upscaled() -> None:
    data = encode(halves((64, 48)), "JPEG")
    prepared = prepare_image(ref(), data, image_id="a", model="gpt-4o")
    assert (prepared.width, prepared.height) == (64, 48)


def test_exif_orientation_is_applied_and_metadata_dropped() -> None:
    image = halves((1600, 1200))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90° clockwise
    exif[0x010F] = "CameraMaker"
    data = encode(image, "JPEG", exif=exif.tobytes())
    prepared = prepare_image(ref(), data, image_id="a", model="gpt-4o")
    out = decoded(prepared.data)
    assert out.size == (768, 1024)
    # The stored left (red) edge is at the top once rotated clockwise.
    assert close_to(out.getpixel((384, 50)), RED)
    assert close_to(out.getpixel((384, 970)), BLUE)
    assert len(out.getexif()) == 0


def test_cmyk_jpeg_becomes_rgb_jpeg() -> None:
    data = encode(Image.new("CMYK", (200, 100), (0, 255, 255, 0)), "JPEG")
    prepared = prepare_image(ref(), data, image_id="a", model="gpt-4o")
    out = decoded(prepared.data)
    assert prepared.mime == "image/jpeg"
    assert (out.format, out.mode) == ("JPEG", "RGB")
    assert close_to(out.getpixel((100, 50)), (255, 0, 0), tolerance=60)


def test_animated_gif_becomes_a_jpeg_of_its_first_frame() -> None:
    frames = [Image.new("RGB", (80, 60), RED), Image.new("RGB", (80, 60), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    prepared = prepare_image(ref("anim.gif"), data, image_id="a", model="gpt-4o")
    out = decoded(prepared.data)
    assert (prepared.output_format, out.format, out.size) == ("jpeg", "JPEG", (80, 60))
    assert close_to(out.getpixel((40, 30)), RED)


def test_webp_becomes_jpeg() -> None:
    data = encode(halves((120, 80)), "WEBP", quality=90)
    prepared = prepare_image(ref("a.webp"), data, image_id="a", model="gpt-4o")
    assert prepared.mime == "image/jpeg"
    assert decoded(prepared.data).format == "JPEG"


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_plain_png_stays_lossless_png(mode: str) -> None:
    image = halves((90, 70), mode)
    prepared = prepare_image(ref("a.png"), encode(image, "PNG"), image_id="a", model="gpt-4o")
    out = decoded(prepared.data)
    assert (prepared.mime, prepared.output_format) == ("image/png", "png")
    assert (out.format, out.mode) == ("PNG", mode)
    assert out.tobytes() == image.tobytes()


def test_png_bytes_named_jpg_are_handled_by_content() -> None:
    prepared = prepare_image(ref("liar.jpg"), encode(halves((50, 40)), "PNG"), image_id="a", model="gpt-4o")
    assert prepared.mime == "image/png"
    assert decoded(prepared.data).format == "PNG"


def test_bmp_named_jpg_is_converted() -> None:
    prepared = prepare_image(ref("old.jpg"), encode(halves((50, 40)), "BMP"), image_id="a", model="gpt-4o")
    assert prepared.mime == "image/jpeg"


def test_palette_and_transparent_pngs_become_jpeg_on_white() -> None:
    palette = halves((60, 40)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    prepared = prepare_image(ref("p.png"), encode(palette, "PNG"), image_id="a", model="gpt-4o")
    assert prepared.mime == "image/jpeg"
    clear = Image.new("LA", (60, 40), (0, 0))
    prepared = prepare_image(ref("la.png"), encode(clear, "PNG"), image_id="a", model="gpt-4o")
    out = decoded(prepared.data)
    assert out.mode == "RGB"
    assert close_to(out.getpixel((30, 20)), (255, 255, 255), tolerance=5)


def test_sixteen_bit_grey_png_is_scaled_not_clipped() -> None:
    image = Image.new("I;16", (40, 40), 32768)
    prepared = prepare_image(ref("deep.png"), encode(image, "PNG"), image_id="a", model="gpt-4o")
    out = decoded(prepared.data)
    assert prepared.mime == "image/jpeg"
    assert close_to(out.getpixel((20, 20)), (128, 128, 128), tolerance=3)


def test_output_over_the_byte_limit_is_rejected() -> None:
    noise = Image.frombytes("RGB", (200, 200), random.Random(1).randbytes(200 * 200 * 3))
    with pytest.raises(ImageRejected) as caught:
        prepare_image(ref("n.png"), encode(noise, "PNG"), image_id="a", model="gpt-4o", max_bytes=10_000)
    assert caught.value.reason == "over 0.01 MB after re-encoding"


# --- rejections -----------------------------------------------------------------------------------------


def rejected(data: bytes, **options: object) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        prepare_image(ref(), data, image_id="a", model="gpt-4o", **options)  # type: ignore[arg-type]
    assert str(caught.value).startswith("images/p1/kitchen/photo.jpg: ")
    return caught.value


def test_zero_byte_file_is_rejected() -> None:
    assert rejected(b"").reason == "zero-byte file"


def test_random_bytes_are_rejected() -> None:
    assert rejected(random.Random(0).randbytes(4096)).reason == "not an image (cannot identify)"


def test_truncated_jpeg_is_rejected(big_jpeg: bytes) -> None:
    assert rejected(big_jpeg[: len(big_jpeg) // 3]).reason == "truncated or corrupt image"


def test_header_claiming_ten_gigapixels_is_rejected_before_decoding() -> None:
    # Decoding the bogus IDAT would fail as "corrupt": the bomb reason proves only the header was read.
    data = png_header_only(100_000, 100_000)
    assert rejected(data).reason == "decompression bomb: 10,000 MP over the 50 MP cap (--max-image-pixels)"
    with pytest.raises(ImageRejected, match="decompression bomb"):
        probe_image(data)


@pytest.mark.parametrize("side", [110, 300])  # just over the cap, and past Pillow's own 2x error
def test_images_over_a_configured_cap_are_rejected(side: int) -> None:
    data = png_header_only(side, 100)
    megapixels = f"{side * 100 / 1_000_000:.2g}"
    expected = f"decompression bomb: {megapixels} MP over the 0.01 MP cap (--max-image-pixels)"
    assert rejected(data, max_pixels=10_000).reason == expected


def test_unsupported_format_is_named() -> None:
    data = encode(Image.new("RGB", (32, 32), RED), "ICO")
    assert rejected(data).reason == "unsupported format ICO"


def test_probe_reads_the_header_only(big_jpeg: bytes) -> None:
    assert probe_image(big_jpeg) == (4000, 3000, "JPEG")
    assert probe_image(png_header_only(640, 480)) == (640, 480, "PNG")
    with pytest.raises(ImageRejected, match="zero-byte file"):
        probe_image(b"")


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    assert outcome(data) != ""


def outcome(data: bytes) -> str:
    """The rejection reason, or the mime type of what was produced."""
    try:
        return prepare_image(ref(), data, image_id="a", model="gpt-4o").mime
    except ImageRejected as exc:
        return exc.reason


def test_importing_images_does_not_import_pillow() -> None:
    code = "import sys, image_analyzer.images; assert 'PIL' not in sys.modules, 'PIL imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
