"""Inference: age photos with a trained generator (``load`` then ``Ager.age``). Never imports training."""

from faceage.infer.ager import AgedPhoto, Ager, NoFaceError, load
from faceage.infer.resolve import ModelNotFoundError

__all__ = ["AgedPhoto", "Ager", "ModelNotFoundError", "NoFaceError", "load"]
