"""``unimir convert clip-sf``: a UniIR CLIP-SF ``.pth`` into a ``clip-sf:<dir>`` encoder (seed-checkpoints.md §1).

Every checkpoint key is ``clip_model.`` + an OpenAI-CLIP key. The architecture (ViT-L/14 or ViT-B/32, or any other
OpenAI CLIP shape) is read off the tensor shapes as OpenAI's ``build_model`` does, then the keys are mapped onto
transformers' ``CLIPModel`` as its own conversion script maps them (in_proj split into q/k/v, projections
transposed, QuickGELU). Missing or unexpected keys are listed, never ignored. The output directory holds
``config.json`` + ``model.safetensors`` (loadable by ``CLIPModel.from_pretrained``), the tokenizer files and
``unimir-clip-sf.json``; it is written beside its destination and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..encoders.clip_sf import FORMAT, FORMAT_VERSION, MARKER, check_tokenizer
from ..errors import UnimirError
from .pth import CheckpointError, read_state_dict

PREFIX = "clip_model."
# keys OpenAI's build_model drops (JIT archives carry them); harmless if present
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


@dataclass(frozen=True)
class ClipArch:
    """An OpenAI CLIP shape, as inferred from a state dict."""

    embed_dim: int
    vocab_size: int
    context_length: int
    text_width: int
    text_layers: int
    text_mlp: int
    vision_width: int
    vision_layers: int
    vision_mlp: int
    patch_size: int
    image_size: int

    @property
    def name(self) -> str:
        kind = {768: "B", 1024: "L", 1280: "H"}.get(self.vision_width, f"W{self.vision_width}")
        return f"ViT-{kind}/{self.patch_size}@{self.image_size}px, d={self.embed_dim}"

    @property
    def default_tokenizer(self) -> str:
        size = "large" if self.vision_width == 1024 else "base"
        return f"openai/clip-vit-{size}-patch{self.patch_size}"


def _layers(state: dict, prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def infer_arch(state: dict, where: str = "checkpoint") -> ClipArch:
    """Shapes of an OpenAI-layout state dict (``clip_model.`` already stripped)."""
    need = ("visual.conv1.weight", "visual.positional_embedding", "token_embedding.weight", "positional_embedding",
            "text_projection", "ln_final.weight", "visual.proj")
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"{where}: not an OpenAI-CLIP layout (missing {missing}); is this a CLIP-SF checkpoint?")
    conv = state["visual.conv1.weight"]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    return ClipArch(
        embed_dim=int(state["text_projection"].shape[1]), vocab_size=int(state["token_embedding.weight"].shape[0]),
        context_length=int(state["positional_embedding"].shape[0]), text_width=int(state["ln_final.weight"].shape[0]),
        text_layers=_layers(state, "transformer.resblocks."),
        text_mlp=int(state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        vision_width=int(conv.shape[0]), vision_layers=_layers(state, "visual.transformer.resblocks."),
        vision_mlp=int(state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        patch_size=int(conv.shape[-1]), image_size=int(conv.shape[-1]) * grid)


def hf_config(arch: ClipArch, bos: int, eos: int, pad: int):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=arch.vocab_size, hidden_size=arch.text_width, intermediate_size=arch.text_mlp,
                         num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_width // 64,
                         max_position_embeddings=arch.context_length, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=pad),
        vision_config=dict(hidden_size=arch.vision_width, intermediate_size=arch.vision_mlp,
                           num_hidden_layers=arch.vision_layers, num_attention_heads=arch.vision_width // 64,
                           image_size=arch.image_size, patch_size=arch.patch_size, hidden_act="quick_gelu",
                           layer_norm_eps=1e-5),
        projection_dim=arch.embed_dim)


_BLOCK = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_TOP = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # transformers' spelling
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias", "logit_scale": "logit_scale"}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_BLOCK_RE = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")


def openai_to_hf(state: dict) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map OpenAI-CLIP keys onto ``CLIPModel`` keys. Returns (mapped tensors, source keys that map to nothing)."""
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        if key in _TOP:
            out[_TOP[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.T
        elif key in _OPENAI_EXTRAS:
            continue
        elif m := _BLOCK_RE.match(key):
            tower = "vision_model" if m.group(1) else "text_model"
            base = f"{tower}.encoder.layers.{m.group(2)}."
            module, kind = m.group(3), m.group(4)
            if module in _BLOCK:
                out[base + f"{_BLOCK[module]}.{kind}"] = value
            else:
                unmapped.append(key)
        elif m := re.match(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", key):
            tower = "vision_model" if m.group(1) else "text_model"
            base = f"{tower}.encoder.layers.{m.group(2)}.self_attn."
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[base + f"{name}.{m.group(3)}"] = part
        else:
            unmapped.append(key)
    return {k: v.contiguous() for k, v in out.items()}, sorted(unmapped)


def expected_keys(config) -> dict[str, tuple[int, ...]]:
    """Persistent parameter names and shapes of ``CLIPModel(config)``, built on the meta device (no memory)."""
    from transformers import CLIPModel

    with torch.device("meta"):
        model = CLIPModel(config)
    buffers = {name for name, _ in model.named_buffers()}
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in buffers}


def load_tokenizer(source: str, vocab_size: int):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the tokenizer {source!r} ({exc.__class__.__name__}): the checkpoint "
                              "holds none; pass --tokenizer with a local directory of CLIP's tokenizer files "
                              "(vocab.json, merges.txt) or a hub id reachable from here") from None
    check_tokenizer(tokenizer, vocab_size, f"tokenizer {source!r}")
    return tokenizer


@dataclass
class ClipSFReport:
    out: Path
    arch: ClipArch
    tokenizer: str
    tensors: int

    def summary(self) -> str:
        return (f"converted CLIP-SF {self.arch.name} ({self.tensors} tensors; tokenizer {self.tokenizer}) -> "
                f"{self.out}; use --encoder clip-sf:{self.out}")


def convert(checkpoint: "str | os.PathLike", out: "str | os.PathLike", tokenizer: str | None = None) -> ClipSFReport:
    """Read ``checkpoint`` (UniIR CLIP-SF ``.pth``) and write the encoder directory ``out``."""
    from safetensors.torch import save_file

    checkpoint, out = Path(checkpoint), Path(out)
    raw = read_state_dict(checkpoint)
    stripped = {k[len(PREFIX):]: v for k, v in raw.items() if k.startswith(PREFIX)}
    foreign = sorted(k for k in raw if not k.startswith(PREFIX))
    if foreign:
        raise CheckpointError(f"{checkpoint}: unexpected keys outside {PREFIX}*: {foreign[:20]}"
                              + (f" (+{len(foreign) - 20} more)" if len(foreign) > 20 else ""))
    arch = infer_arch(stripped, str(checkpoint))
    source = tokenizer or arch.default_tokenizer
    tok = load_tokenizer(source, arch.vocab_size)
    config = hf_config(arch, tok.bos_token_id, tok.eos_token_id,
                       tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    mapped, unmapped = openai_to_hf(stripped)
    want = expected_keys(config)
    missing = sorted(set(want) - set(mapped))
    unexpected = sorted(set(mapped) - set(want))
    shapes = sorted(f"{k}: {tuple(mapped[k].shape)} != {want[k]}" for k in want
                    if k in mapped and tuple(mapped[k].shape) != want[k])
    if missing or unexpected or unmapped or shapes:
        raise CheckpointError(f"{checkpoint}: does not match an OpenAI CLIP {arch.name}: missing keys {missing}, "
                              f"unexpected keys {sorted(unexpected + [PREFIX + k for k in unmapped])}, "
                              f"shape mismatches {shapes}")
    _check_destination(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        config.save_pretrained(tmp)
        save_file({k: v.float().contiguous() for k, v in mapped.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        tok.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({
            "format": FORMAT, "format_version": FORMAT_VERSION, "fusion": "raw-sum", "architecture": asdict(arch),
            "conversion_id": uuid.uuid4().hex,  # keys the embedding cache: a new conversion never reads stale vectors
            "name": arch.name, "tokenizer": source,
            "source": {"file": checkpoint.name, "bytes": checkpoint.stat().st_size}}, indent=2))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ClipSFReport(out, arch, source, len(mapped))


def _check_destination(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise UnimirError(f"{out} exists and is not a converted CLIP-SF directory; choose another --out")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished directory into place; an older conversion there (ours, by its marker) goes only after."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
