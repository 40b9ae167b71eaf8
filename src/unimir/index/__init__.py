"""Index storage and search: ``Index`` (the backend object), segments, records, the vector store and retrievers."""

from .dense import DenseSpec, FaissStore
from .index import MODES, Index, SearchHit, SearchResult
from .retrievers import RETRIEVERS, Retriever, register
from .vectors import VectorStore

__all__ = ["Index", "SearchHit", "SearchResult", "DenseSpec", "FaissStore", "VectorStore", "Retriever", "RETRIEVERS",
           "register", "MODES"]
