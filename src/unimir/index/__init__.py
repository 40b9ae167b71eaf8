"""Index storage and search: ``Index`` (the backend object), the dense FAISS partitions and the on-disk layout."""

from .dense import DenseIndex, DenseSpec
from .index import MODES, Index, SearchHit, SearchResult

__all__ = ["Index", "SearchHit", "SearchResult", "DenseIndex", "DenseSpec", "MODES"]
