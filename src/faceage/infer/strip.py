"""Progression strips: one face aged to every group, side by side, each tile labelled with its group."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def label_height(tile_size: int) -> int:
    """Height in pixels of the label band under tiles of ``tile_size`` px."""
    return max(14, tile_size // 8)


def progression_strip(tiles: Sequence[np.ndarray], labels: Sequence[str]) -> Image.Image:
    """Tiles (each SxSx3 uint8) in a row with their labels underneath: ``len(tiles) * S`` by ``S + label_height``."""
    if not tiles or len(tiles) != len(labels):
        raise ValueError(f"need one label per tile, got {len(tiles)} tiles and {len(labels)} labels")
    size = tiles[0].shape[0]
    if any(tile.shape != (size, size, 3) for tile in tiles):
        raise ValueError(f"tiles must all be {size}x{size}x3, got shapes {[tile.shape for tile in tiles]}")
    band = label_height(size)
    strip = Image.new("RGB", (size * len(tiles), size + band), "white")
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default(size=band - 4)
    for i, (tile, label) in enumerate(zip(tiles, labels, strict=True)):
        strip.paste(Image.fromarray(tile), (i * size, 0))
        draw.text((i * size + size / 2, size + band / 2), label, fill="black", font=font, anchor="mm")
    return strip
