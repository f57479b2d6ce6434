"""Face-aging methods, one file each, found by name through the registry."""

from faceage.models.registry import get_model, known_models, register_model

__all__ = ["get_model", "known_models", "register_model"]
