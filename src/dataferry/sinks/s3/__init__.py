"""S3-compatible object storage as a destination (docs/object-storage.md)."""

from .sink import S3Sink, parse_url, url_of

__all__ = ["S3Sink", "parse_url", "url_of"]
