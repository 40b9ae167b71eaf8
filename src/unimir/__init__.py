"""unimir: universal multimodal information retrieval.

Quick start::

    from unimir import Index, evaluate
    index = Index.build("cand_pool.jsonl", "my-index")          # or Index.load("my-index")
    result = index.search(text="a red apple", modality="image", k=5)
    for hit in result.hits:
        print(hit.rank, hit.did, hit.score)
"""

from .data.records import Candidate, Modality, Query
from .errors import DataError, InvalidInputError, NotFoundError, UnimirError
from .eval import EvalResult, evaluate
from .index import Index, SearchHit, SearchResult

__version__ = "0.1.0"
__all__ = ["Index", "SearchHit", "SearchResult", "evaluate", "EvalResult", "Candidate", "Query", "Modality",
           "UnimirError", "InvalidInputError", "DataError", "NotFoundError"]
