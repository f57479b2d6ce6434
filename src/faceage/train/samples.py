"""Sample grids: fixed validation faces (rows) and what the model makes of them (columns, see
``FaceAgingModel.sample_grid``), with labels."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from faceage.data.loader import FaceDataset

HEADER = 18  # pixels of label strip above the grid


def pick_faces(dataset: FaceDataset, rows: int) -> dict[str, torch.Tensor]:
    """``rows`` faces spread evenly over the age range of ``dataset`` (youngest first), as a float batch."""
    order = np.argsort(dataset.ages.numpy(), kind="stable")
    picks = order[np.linspace(0, len(order) - 1, num=min(rows, len(order))).round().astype(int)]
    return dataset.batch(picks.tolist())


def grid_image(grid: torch.Tensor, column_labels: list[str], row_labels: list[str]) -> np.ndarray:
    """An ``HxWx3`` uint8 picture of ``grid`` with a header of column labels and a label on each row's first tile."""
    rows, cols, _, s, _ = grid.shape
    tiles = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 3, 1, 4, 2).cpu().numpy()
    canvas = Image.new("RGB", (cols * s, HEADER + rows * s), "white")
    canvas.paste(Image.fromarray(tiles.reshape(rows * s, cols * s, 3)), (0, HEADER))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for c, label in enumerate(column_labels):
        draw.text((c * s + 3, 3), label, fill="black", font=font)
    for r, label in enumerate(row_labels):
        draw.text((3, HEADER + r * s + 3), label, fill="white", stroke_width=1, stroke_fill="black", font=font)
    return np.asarray(canvas)
