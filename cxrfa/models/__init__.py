"""The model family: encoder registry, alignment heads, the composed model, the frozen-feature cache and
demo stand-in weights."""

from cxrfa.models.alignment import AlignmentModel
from cxrfa.models.cache import FeatureCache
from cxrfa.models.encoders import Encoder
from cxrfa.models.model import CXRModel, build_model
from cxrfa.models.registry import EncoderInfo, build_encoder, list_encoders, register_encoder

__all__ = [
    "AlignmentModel",
    "CXRModel",
    "Encoder",
    "EncoderInfo",
    "FeatureCache",
    "build_encoder",
    "build_model",
    "list_encoders",
    "register_encoder",
]
