"""Where files go: the Sink interface (base.py) and its implementations (local.py, s3/).

A destination names its sink by URL scheme, fsspec-style: ``s3://bucket/prefix``
is the S3 sink, a plain path the local folder. Implementations are imported
lazily (the S3 client library loads only for an s3:// destination).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path

from .base import Extracted, Held, PartWriter, Sink

__all__ = [
    "SINK_SCHEMES",
    "Extracted",
    "Held",
    "PartWriter",
    "Sink",
    "destination_scheme",
    "sink_factory_for",
    "sink_url",
]

# scheme -> "module:attribute" of a Sink class taking the destination folder.
SINK_SCHEMES: dict[str, str] = {"s3": "dataferry.sinks.s3:S3Sink"}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def destination_scheme(text: str) -> str | None:
    """The URL scheme of a destination (``s3``), None for a plain path.

    Raises ValueError for a scheme no sink handles.
    """
    found = _URL.match(text)
    if found is None:
        return None
    scheme = found.group(1).lower()
    if scheme not in SINK_SCHEMES:
        known = ", ".join(f"{name}://" for name in sorted(SINK_SCHEMES))
        raise ValueError(f"{scheme}:// destinations are not supported (supported: {known})")
    return scheme


def sink_factory_for(url: str | None) -> Callable[[Path], Sink]:
    """The sink class for a destination URL (None: the local folder sink)."""
    if url is None:
        from .local import LocalSink

        return LocalSink
    scheme = destination_scheme(url)
    assert scheme is not None
    module, _, attribute = SINK_SCHEMES[scheme].partition(":")
    factory: Callable[[Path], Sink] = getattr(importlib.import_module(module), attribute)
    return factory


def sink_url(url: str, folder: Path) -> str:
    """A destination folder the engine holds as a Path, back as its URL (``s3://b/p``).

    pathlib folds ``s3://b/p`` into ``s3:/b/p``; the scheme comes from url.
    """
    scheme = destination_scheme(url)
    text = folder.as_posix()
    prefix = f"{scheme}:/"
    if scheme is None or not text.startswith(prefix):
        return text
    return f"{scheme}://{text[len(prefix) :].lstrip('/')}"
