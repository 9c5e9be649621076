"""Where files come from: the Source interface (base.py), one package per protocol.

Protocols are imported lazily by scheme, so loading the interface costs nothing.
"""

from .base import Listing, RemoteFile, Selection, Source, SourceConnector, SourceReader

__all__ = ["Listing", "RemoteFile", "Selection", "Source", "SourceConnector", "SourceReader"]
