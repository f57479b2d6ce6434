"""Inference: age photos with a trained generator (``load`` then ``Ager.age``). Never imports training."""

from faceage.data.imageio import ImageTooLargeError
from faceage.infer.ager import MAX_PIXELS, AgedPhoto, AgedStream, Ager, NoFaceError, load
from faceage.infer.resolve import ModelNotFoundError

__all__ = [
    "MAX_PIXELS",
    "AgedPhoto",
    "AgedStream",
    "Ager",
    "ImageTooLargeError",
    "ModelNotFoundError",
    "NoFaceError",
    "load",
]
