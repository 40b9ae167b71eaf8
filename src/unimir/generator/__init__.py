"""Stage 2 of GENIUS and search: the ID generator, the ID trie, constrained beam search and the retriever."""

from .beam import (
                   BeamSearchResult,
                   constrained_beam_search,
                   first_code_mask,
                   reference_beam_search,
                   residual_beam_search,
                   sequence_log_probs,
)
from .model import GeneratorConfig, GeneratorLoss, IDGenerator, LevelMaskedT5
from .retriever import SEARCH_MODES, GenerativeRetriever, SearchMode, allowed_modalities
from .train import GeneratorTrainConfig, GeneratorTrainReport, mix_query_target, sample_mixed_inputs, train_generator
from .trie import SemanticIDTrie
from .vocab import EOS, PAD, UNK, IDVocab

__all__ = [
    "EOS", "PAD", "SEARCH_MODES", "UNK", "BeamSearchResult", "GenerativeRetriever", "GeneratorConfig",
    "GeneratorLoss", "GeneratorTrainConfig", "GeneratorTrainReport", "IDGenerator", "IDVocab", "LevelMaskedT5",
    "SearchMode", "SemanticIDTrie", "allowed_modalities", "constrained_beam_search", "first_code_mask",
    "mix_query_target", "reference_beam_search", "residual_beam_search", "sample_mixed_inputs",
    "sequence_log_probs", "train_generator",
]
