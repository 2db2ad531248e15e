"""Regenerate the tiny example photos under examples/images/ (deterministic: same Pillow, same bytes).

    python examples/make_examples.py

Two properties, a few categories each, one to three small drawings per category: enough to try a dry run
or a run against a local OpenAI-compatible server without shipping real photos.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"

Colour = tuple[int, int, int]
Painter = Callable[[ImageDraw.ImageDraw, int, int], None]


def kitchen(cabinet: Colour) -> Painter:
    def paint(draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
        draw.rectangle((0, 0, w, h * 2 // 3), fill=(236, 230, 214))  # wall
        draw.rectangle((0, h * 2 // 3, w, h), fill=(150, 110, 70))  # wood floor
        draw.rectangle((w // 10, h // 2, w * 9 // 10, h * 4 // 5), fill=cabinet)  # base cabinets
        draw.rectangle((w // 10, h // 2 - 4, w * 9 // 10, h // 2), fill=(60, 60, 60))  # counter top
        draw.rectangle((w // 10, h // 8, w * 4 // 10, h // 3), fill=cabinet)  # wall cabinet
        draw.rectangle((w // 2, h // 8, w * 8 // 10, h * 3 // 8), fill=(150, 200, 240))  # window

    return paint


def bedroom(blanket: Colour) -> Painter:
    def paint(draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
        draw.rectangle((0, 0, w, h * 3 // 5), fill=(200, 215, 230))  # painted wall
        draw.rectangle((0, h * 3 // 5, w, h), fill=(180, 160, 140))  # carpet
        draw.rectangle((w // 5, h // 3, w * 4 // 5, h // 2), fill=(120, 80, 50))  # headboard
        draw.rectangle((w // 5, h // 2, w * 4 // 5, h * 4 // 5), fill=blanket)  # bed
        draw.ellipse((w // 4, h // 2 - 6, w * 2 // 5, h // 2 + 8), fill=(250, 250, 250))  # pillow

    return paint


def bathroom(draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
    draw.rectangle((0, 0, w, h), fill=(235, 240, 240))  # tiled wall
    for x in range(0, w, 16):
        draw.line((x, 0, x, h), fill=(200, 210, 210))
    draw.rounded_rectangle((w // 8, h // 2, w * 7 // 8, h * 7 // 8), radius=10, fill=(250, 250, 250))  # tub
    draw.rectangle((w * 3 // 4, h // 6, w * 7 // 8, h // 3), fill=(170, 190, 200))  # mirror


def exterior(wall: Colour, roof: Colour) -> Painter:
    def paint(draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
        draw.rectangle((0, 0, w, h * 2 // 3), fill=(140, 190, 235))  # sky
        draw.rectangle((0, h * 2 // 3, w, h), fill=(90, 160, 70))  # lawn
        draw.rectangle((w // 4, h * 2 // 5, w * 3 // 4, h * 4 // 5), fill=wall)  # house
        draw.polygon([(w // 5, h * 2 // 5), (w // 2, h // 6), (w * 4 // 5, h * 2 // 5)], fill=roof)
        draw.rectangle((w * 9 // 20, h * 3 // 5, w * 11 // 20, h * 4 // 5), fill=(90, 60, 40))  # door

    return paint


# property id -> category -> [(file name, size, painter)]
PLAN: dict[str, dict[str, list[tuple[str, tuple[int, int], Painter]]]] = {
    "30434108090030050": {
        "kitchen": [
            ("kitchen_1.jpg", (160, 120), kitchen((240, 240, 240))),
            ("kitchen_2.jpg", (120, 90), kitchen((70, 90, 120))),
        ],
        "bedroom": [
            ("Primary bedroom.jpg", (160, 120), bedroom((60, 100, 160))),
            ("bedroom_2.png", (96, 72), bedroom((200, 80, 80))),
        ],
        "exterior": [("front.jpg", (160, 107), exterior((230, 220, 200), (110, 60, 50)))],
    },
    "0512345678": {
        "kitchen": [("kitchen.png", (96, 72), kitchen((180, 140, 90)))],
        "bathroom": [("bath_1.jpg", (120, 90), bathroom), ("bath_2.jpg", (90, 120), bathroom)],
        "exterior": [
            ("front.jpg", (160, 107), exterior((250, 245, 235), (70, 70, 80))),
            ("back.jpg", (128, 96), exterior((210, 190, 160), (70, 70, 80))),
            ("street.jpg", (64, 64), exterior((250, 245, 235), (70, 70, 80))),
        ],
    },
}


def render(size: tuple[int, int], painter: Painter) -> Image.Image:
    image = Image.new("RGB", size)
    painter(ImageDraw.Draw(image), *size)
    return image


def main() -> None:
    for property_id, categories in PLAN.items():
        for category, files in categories.items():
            folder = IMAGES / property_id / category
            folder.mkdir(parents=True, exist_ok=True)
            for name, size, painter in files:
                image = render(size, painter)
                if name.endswith(".png"):
                    image.save(folder / name, "PNG", optimize=True)
                else:
                    image.save(folder / name, "JPEG", quality=70, optimize=True)
    total = sum(path.stat().st_size for path in IMAGES.rglob("*") if path.is_file())
    print(f"wrote examples to {IMAGES} ({total / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
