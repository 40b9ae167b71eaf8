"""The ID generator (``genius-method.md`` §4.1-4.2): a T5 decoder cross-attending to a learnt prefix of the query.

The model is transformers' ``T5ForConditionalGeneration`` with a zero-layer encoder (its "encoder" is only the final
RMSNorm over P prefix vectors u = reshape(W_p z + b, [P, d_model])), so ``generate(encoder_outputs=...)`` runs on
exactly the weights the fast decoder uses.

Each decoding step t emits a level-t code, so the model's next-token distribution is a softmax over level t's
token range only: out-of-level logits are -inf in ``forward`` (and never computed by the fast decoder or the
training loss). This equals the paper's full-vocabulary softmax once trained, but costs K, not 6 + L*K, per step.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from ..atomic import write_json
from ..errors import IndexFormatError, InvalidInputError
from ..quantizer.checkpoint import (
    load_tensors,
    load_tensors_strict,
    module_tensors,
    read_versioned_json,
    save_tensors,
    tensors_digest,
)
from ..quantizer.config import config_from_dict
from .vocab import EOS, PAD, IDVocab

FORMAT_VERSION = 1
# transformers renamed T5's key/value-cache argument from ``past_key_values`` to ``cache`` (5.24); pass it on under
# whichever name the installed release takes.
_CACHE_ARG = "cache" if "cache" in inspect.signature(T5ForConditionalGeneration.forward).parameters \
    else "past_key_values"
WEIGHTS_FILE = "generator.safetensors"
CONFIG_FILE = "generator.json"


@dataclass(frozen=True)
class GeneratorConfig:
    """Generator shape. Defaults are a CPU model; ``GeneratorConfig.paper()`` gives the published t5-small shape."""

    dim: int = 384  # input z dimension (the quantizer's d; paper 768)
    levels: int = 3  # L semantic levels, from the quantizer (paper 8)
    codebook_size: int = 64  # K, from the quantizer (paper 4096)
    num_layers: int = 2  # decoder layers (paper 6)
    d_model: int = 128  # paper 512
    num_heads: int = 4  # paper 8 (heads of 64)
    d_ff: int = 512  # ReLU FFN width (paper 2048)
    prefix_len: int = 6  # P prefix vectors (paper 30)
    dropout: float = 0.1
    embed_init_scale: float = 100.0  # alpha: norm of a code token's initial embedding (paper 100)

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise InvalidInputError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        for name in ("dim", "levels", "codebook_size", "num_layers", "d_model", "d_ff", "prefix_len"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"generator {name} must be >= 1")

    @classmethod
    def paper(cls, dim: int = 768, levels: int = 8, codebook_size: int = 4096) -> "GeneratorConfig":
        return cls(dim=dim, levels=levels, codebook_size=codebook_size, num_layers=6, d_model=512, num_heads=8,
                   d_ff=2048, prefix_len=30)

    @property
    def vocab(self) -> IDVocab:
        return IDVocab(self.levels, self.codebook_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GeneratorConfig":
        return config_from_dict(cls, data)


class LevelMaskedT5(T5ForConditionalGeneration):
    """T5 whose logits at decoder position t are restricted to level t's tokens (then only </s>)."""

    def __init__(self, config: T5Config, vocab: IDVocab):
        super().__init__(config)
        bias = torch.full((vocab.code_length + 1, vocab.size), float("-inf"))
        for level in range(vocab.code_length):
            lo = vocab.level_offset(level)
            bias[level, lo:lo + vocab.level_size(level)] = 0.0
        bias[vocab.code_length, EOS] = 0.0
        self.register_buffer("level_bias", bias, persistent=False)

    # The explicit signature matters: generate() validates its kwargs against it. It names both spellings of the
    # cache, since a step's level (hence its mask) is the number of positions already cached.
    def forward(self, decoder_input_ids=None, encoder_outputs=None, past_key_values=None, cache=None, use_cache=None,
                **kwargs):
        if kwargs.get("labels") is not None:
            raise InvalidInputError("LevelMaskedT5 computes no loss; use IDGenerator.loss")
        cache = cache if cache is not None else past_key_values
        past = cache.get_seq_length() if cache is not None else 0
        out = super().forward(decoder_input_ids=decoder_input_ids, encoder_outputs=encoder_outputs,
                              use_cache=use_cache, **{_CACHE_ARG: cache}, **kwargs)
        steps = torch.arange(out.logits.shape[1], device=out.logits.device) + past
        out.logits = out.logits + self.level_bias[steps.clamp_max(self.level_bias.shape[0] - 1)].to(out.logits.dtype)
        return out


@dataclass
class GeneratorLoss:
    """loss: scalar token-level cross-entropy; token_acc / exact_acc: teacher-forced accuracies (floats);
    level_acc: float [L+1], per-level accuracy."""

    loss: torch.Tensor
    token_acc: float
    exact_acc: float
    level_acc: list[float]


class IDGenerator(nn.Module):
    """Query vector z (float32 [n, d]) -> distribution over IDs (L+1 codes), decoded by beam search."""

    def __init__(self, config: GeneratorConfig, seed: int = 0):
        super().__init__()
        self.config = config
        self.vocab = config.vocab
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.prefix = nn.Linear(config.dim, config.prefix_len * config.d_model)
            self.t5 = LevelMaskedT5(T5Config(
                vocab_size=self.vocab.size, d_model=config.d_model, d_kv=config.d_model // config.num_heads,
                d_ff=config.d_ff, num_layers=0, num_decoder_layers=config.num_layers, num_heads=config.num_heads,
                dropout_rate=config.dropout, feed_forward_proj="relu", pad_token_id=PAD, eos_token_id=EOS,
                decoder_start_token_id=PAD), self.vocab)
        # T5 scales decoder outputs by d_model^-0.5 before the tied output layer.
        self.output_scale = config.d_model ** -0.5 if self.t5.config.scale_decoder_outputs else 1.0

    @property
    def device(self) -> torch.device:
        return self.prefix.weight.device

    @torch.no_grad()
    def init_code_embeddings(self, codebooks: list[torch.Tensor], projection: torch.Tensor | None = None,
                             seed: int = 0) -> None:
        """E[token(l, c)] = alpha * W_e @ normalize(C_l[c]) for every level l and code c.

        codebooks: [C_0 (3 x d), C_1 (K x d), ...] as from ``SemanticQuantizer.codebooks()``. projection: W_e,
        float32 [d_model, d]; default U(-1/sqrt(d), 1/sqrt(d)) (``nn.Linear``'s init, as in the reference), so an
        embedding's norm is about alpha * sqrt(d_model / 3d). Tied weights make this the output layer's
        initialisation too. Special tokens keep T5's default init.
        """
        cfg = self.config
        if len(codebooks) != self.vocab.code_length:
            raise InvalidInputError(f"expected {self.vocab.code_length} codebooks, got {len(codebooks)}")
        if projection is None:
            gen = torch.Generator().manual_seed(seed)
            projection = (torch.rand(cfg.d_model, cfg.dim, generator=gen) * 2.0 - 1.0) / cfg.dim ** 0.5
        weight = self.t5.shared.weight
        for level, book in enumerate(codebooks):
            if tuple(book.shape) != (self.vocab.level_size(level), cfg.dim):
                raise InvalidInputError(f"codebook {level} has shape {tuple(book.shape)}, expected "
                                        f"{(self.vocab.level_size(level), cfg.dim)}")
            rows = cfg.embed_init_scale * F.normalize(book.float().to(weight.device), dim=-1) @ \
                projection.to(weight.device).T
            lo = self.vocab.level_offset(level)
            weight[lo:lo + len(book)] = rows.to(weight.dtype)

    def encode(self, z: torch.Tensor) -> BaseModelOutput:
        """Prefix states for the decoder: last_hidden_state float [n, P, d_model]."""
        u = self.prefix(z).view(z.shape[0], self.config.prefix_len, self.config.d_model)
        return BaseModelOutput(last_hidden_state=self.t5.encoder(inputs_embeds=u).last_hidden_state)

    def level_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """Logits over level ``level``'s codes from final decoder states hidden [..., d_model]: [..., level_size]."""
        lo = self.vocab.level_offset(level)
        return (hidden * self.output_scale) @ self.t5.shared.weight[lo:lo + self.vocab.level_size(level)].T

    def loss(self, z: torch.Tensor, codes: torch.Tensor) -> GeneratorLoss:
        """Teacher-forced cross-entropy of target codes int64 [n, L+1] given inputs z float32 [n, d]; each
        position's softmax runs over its level's codes only, as in ``LevelMaskedT5``."""
        tokens = self.vocab.codes_to_tokens(codes)
        decoder_input = torch.cat([torch.full_like(tokens[:, :1], PAD), tokens[:, :-1]], dim=1)
        hidden = self.t5.decoder(input_ids=decoder_input, encoder_hidden_states=self.encode(z).last_hidden_state,
                                 use_cache=False).last_hidden_state
        losses, correct = [], []
        for level in range(self.vocab.code_length):
            logits = self.level_logits(hidden[:, level], level).float()
            losses.append(F.cross_entropy(logits, codes[:, level], reduction="none"))
            correct.append(logits.argmax(-1) == codes[:, level])
        hits = torch.stack(correct, dim=1)
        return GeneratorLoss(torch.stack(losses, dim=1).mean(), hits.float().mean().item(),
                             hits.all(dim=1).float().mean().item(), hits.float().mean(0).tolist())

    def digest(self) -> str:
        return tensors_digest(module_tensors(self))

    def save(self, directory: str | Path) -> None:
        """Write ``generator.json`` (format version, config, digest) and ``generator.safetensors``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(directory / WEIGHTS_FILE, module_tensors(self))
        write_json(directory / CONFIG_FILE,
                   {"format_version": FORMAT_VERSION, "config": self.config.to_dict(), "digest": self.digest()})

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> "IDGenerator":
        directory = Path(directory)
        meta = read_versioned_json(directory / CONFIG_FILE, FORMAT_VERSION)
        model = cls(GeneratorConfig.from_dict(meta["config"]))
        tensors, _ = load_tensors(directory / WEIGHTS_FILE)
        load_tensors_strict(model, tensors, str(directory / WEIGHTS_FILE))
        if model.digest() != meta.get("digest"):
            raise IndexFormatError(f"{directory / WEIGHTS_FILE} does not match the digest in {CONFIG_FILE}")
        return model.to(device).eval()
