"""Where files go: the Sink interface (base.py) and its implementations (local.py)."""

from .base import Extracted, Held, PartWriter, Sink

__all__ = ["Extracted", "Held", "PartWriter", "Sink"]
