"""Encoders: timm backbones (with offline weights) that turn images into feature vectors."""

from .backbones import EMBEDDED, Backbone, create_backbone

__all__ = ["EMBEDDED", "Backbone", "create_backbone"]
