"""The web app's views as HTML with images inlined as ``data:`` URIs, so no photo or result is ever a file on the
server: the page holds them, and a download link hands over the PNG it already has."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:  # pragma: no cover
    from faceage.face import Face

PREVIEW_SIDE = 1280  # photos longer than this are shown downscaled (as JPEG); downloads are always full size
CSS = """
.faceage-pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 8px; }
.faceage-pair figure, .faceage-tiles figure { margin: 0; }
.faceage-pair img, .faceage-tiles img, .faceage-strip img { max-width: 100%; height: auto; display: block; }
.faceage-tiles { display: flex; flex-wrap: wrap; gap: 8px; }
.faceage-tiles img { width: 192px; }
.faceage figcaption { font-size: 0.9em; opacity: 0.8; }
.faceage-download { display: inline-block; margin-top: 8px; font-weight: 600; }
#message .prose, #message p { margin: 0; }
"""


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def preview_uri(photo: np.ndarray | Image.Image) -> str:
    """A ``data:`` URI showing ``photo``: lossless PNG up to :data:`PREVIEW_SIDE`, a downscaled JPEG beyond."""
    image = photo if isinstance(photo, Image.Image) else Image.fromarray(photo)
    buffer = io.BytesIO()
    if max(image.size) <= PREVIEW_SIDE:
        image.save(buffer, format="PNG", compress_level=1)
        return data_uri(buffer.getvalue(), "image/png")
    image = image.copy()
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.LANCZOS)
    image.save(buffer, format="JPEG", quality=90)
    return data_uri(buffer.getvalue(), "image/jpeg")


def figure(uri: str, caption: str, css_class: str) -> str:
    text = html.escape(caption)
    return f'<figure><img class="{css_class}" src="{uri}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def download_link(png: bytes, filename: str, text: str = "Download PNG") -> str:
    name = html.escape(filename, quote=True)
    return f'<a class="faceage-download" download="{name}" href="{data_uri(png, "image/png")}">{html.escape(text)}</a>'


def with_face_numbers(photo: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """``photo`` with each face's box drawn and numbered (1 = largest), so the user can pick one."""
    image = Image.fromarray(photo)
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    font = ImageFont.load_default(size=max(14, round(max(image.size) / 30)))
    for i, face in enumerate(faces, start=1):
        x0, y0, x1, y1 = face.box
        draw.rectangle([x0, y0, x1, y1], outline=(255, 220, 0), width=width)
        draw.text((x0 + width, y0 + width), str(i), fill=(255, 220, 0), font=font, stroke_width=2, stroke_fill="black")
    return np.asarray(image)


def photo_view(photo: np.ndarray, faces: Sequence[Face]) -> str:
    """The uploaded photo, faces numbered when there are several: the "before" half waiting for its "after"."""
    shown = with_face_numbers(photo, faces) if len(faces) > 1 else photo
    caption = "Before" if len(faces) == 1 else f"Before: {len(faces)} faces, numbered largest first"
    return f'<div class="faceage faceage-pair">{figure(preview_uri(shown), caption, "faceage-before")}</div>'


def before_after(
    before: np.ndarray,
    after: Image.Image,
    after_png: bytes,
    *,
    caption: str,
    filename: str,
    close_ups: tuple[np.ndarray, np.ndarray],
) -> str:
    """Before and after side by side, the face close up below them, and the full-size PNG to download."""
    after_uri = data_uri(after_png, "image/png") if max(after.size) <= PREVIEW_SIDE else preview_uri(after)
    pair = figure(preview_uri(before), "Before", "faceage-before") + figure(after_uri, caption, "faceage-after")
    faces = figure(preview_uri(close_ups[0]), "Face before", "faceage-face-before")
    faces += figure(preview_uri(close_ups[1]), "Face after", "faceage-face-after")
    return (
        f'<div class="faceage"><div class="faceage-pair">{pair}</div><div class="faceage-pair">{faces}</div>'
        f"{download_link(after_png, filename)}</div>"
    )


def strip_view(strip_png: bytes, filename: str) -> str:
    uri = data_uri(strip_png, "image/png")
    return (
        f'<div class="faceage faceage-strip"><img class="faceage-strip-image" src="{uri}" alt="progression strip">'
        f"{download_link(strip_png, filename)}</div>"
    )


def tiles_view(tiles: Sequence[tuple[np.ndarray | None, str]]) -> str:
    """Close-ups side by side, each captioned (a tile without an image shows only its caption, e.g. an error)."""
    parts = []
    for tile, caption in tiles:
        if tile is None:
            parts.append(f'<figure><figcaption class="faceage-error">{html.escape(caption)}</figcaption></figure>')
        else:
            parts.append(figure(preview_uri(tile), caption, "faceage-tile"))
    return f'<div class="faceage faceage-tiles">{"".join(parts)}</div>'
