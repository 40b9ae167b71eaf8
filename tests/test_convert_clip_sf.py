"""UniIR CLIP-SF conversion: a tiny OpenAI-layout checkpoint wrapped as UniIR saves it, checked against a pure-torch
OpenAI-CLIP reference written here; the allow-listing unpickler; key and tokenizer checks."""

from __future__ import annotations

import subprocess
import sys
import types
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from unimir.convert import CheckpointError, clip_sf, read_state_dict
from unimir.encoders import Item
from unimir.errors import UnimirError

WORDS = ["a", "red", "green", "blue", "circle", "square", "photo", "of", "the", "find", "image", "caption", "."]
SPECIALS = ["<|unk|>", "<|startoftext|>", "<|endoftext|>"]  # EOT is the last id, as in CLIP's real vocabulary
VOCAB = {w: i for i, w in enumerate(["<|pad|>"] + WORDS + SPECIALS)}
SOT, EOT = VOCAB["<|startoftext|>"], VOCAB["<|endoftext|>"]
CTX, TEXT_W, VIS_W, EMBED, PATCH, IMAGE = 12, 64, 128, 32, 8, 32  # heads = width // 64: 1 text, 2 vision


# --- a stand-in for omegaconf.DictConfig, pickled under the real class name -----------------------------------
class DictConfig:
    def __init__(self, content):
        self._content = content
        self._metadata = {"ref_type": typing.Any, "key_type": typing.Any}


class NotAllowed:
    pass


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


@pytest.fixture
def omegaconf_names(monkeypatch):
    """Make ``DictConfig`` picklable as ``omegaconf.dictconfig.DictConfig`` without omegaconf installed."""
    fake = types.ModuleType("omegaconf.dictconfig")
    fake.DictConfig = DictConfig
    monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))
    monkeypatch.setitem(sys.modules, "omegaconf.dictconfig", fake)
    monkeypatch.setattr(DictConfig, "__module__", "omegaconf.dictconfig")


def openai_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with OpenAI CLIP's exact key names (what UniIR's clip_model holds)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.05: torch.randn(*shape, generator=g) * s  # noqa: E731
    st: dict[str, torch.Tensor] = {}

    def blocks(prefix, width, layers):
        for i in range(layers):
            b = f"{prefix}transformer.resblocks.{i}."
            st[b + "attn.in_proj_weight"], st[b + "attn.in_proj_bias"] = r(3 * width, width, s=0.1), r(3 * width)
            st[b + "attn.out_proj.weight"], st[b + "attn.out_proj.bias"] = r(width, width, s=0.1), r(width)
            for ln in ("ln_1", "ln_2"):
                st[b + f"{ln}.weight"], st[b + f"{ln}.bias"] = 1 + r(width), r(width)
            st[b + "mlp.c_fc.weight"], st[b + "mlp.c_fc.bias"] = r(4 * width, width, s=0.1), r(4 * width)
            st[b + "mlp.c_proj.weight"], st[b + "mlp.c_proj.bias"] = r(width, 4 * width, s=0.1), r(width)

    st["token_embedding.weight"] = r(len(VOCAB), TEXT_W, s=0.5)
    st["positional_embedding"] = r(CTX, TEXT_W, s=0.1)
    blocks("", TEXT_W, 2)
    st["ln_final.weight"], st["ln_final.bias"] = 1 + r(TEXT_W), r(TEXT_W)
    st["text_projection"] = r(TEXT_W, EMBED, s=0.2)
    st["visual.conv1.weight"] = r(VIS_W, 3, PATCH, PATCH, s=0.1)
    st["visual.class_embedding"] = r(VIS_W, s=0.5)
    st["visual.positional_embedding"] = r((IMAGE // PATCH) ** 2 + 1, VIS_W, s=0.1)
    st["visual.ln_pre.weight"], st["visual.ln_pre.bias"] = 1 + r(VIS_W), r(VIS_W)
    blocks("visual.", VIS_W, 2)
    st["visual.ln_post.weight"], st["visual.ln_post.bias"] = 1 + r(VIS_W), r(VIS_W)
    st["visual.proj"] = r(VIS_W, EMBED, s=0.2)
    st["logit_scale"] = torch.tensor(4.6052)
    return st


def save_uniir(path, state, config=None, **extra):
    """As UniIR's trainer saves: model (clip_model.*), optimizer, config (OmegaConf), epoch."""
    model = {"clip_model." + k: v for k, v in state.items()}
    opt = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
           "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.98), "eps": 1e-6, "params": [0]}]}
    torch.save({"model": model, "optimizer": opt, "config": config, "epoch": 7, **extra}, path)


def make_tokenizer(directory):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<|unk|>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", SOT), ("<|endoftext|>", EOT)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|unk|>")
    fast.save_pretrained(directory)
    return directory


# --- the reference: OpenAI CLIP's forward, written plainly -----------------------------------------------------
def ref_tokenize(text: str) -> torch.Tensor:
    """clip.tokenize(text, context_length=CTX, truncate=True) over the word vocabulary."""
    words = text.lower().replace(".", " . ").split()
    tokens = [SOT] + [VOCAB.get(w, VOCAB["<|unk|>"]) for w in words] + [EOT]
    if len(tokens) > CTX:
        tokens = tokens[:CTX]
        tokens[-1] = EOT
    return torch.tensor(tokens + [0] * (CTX - len(tokens)))


def ref_blocks(st, prefix, x, layers, heads, mask=None):
    ln = lambda y, n: F.layer_norm(y, y.shape[-1:], st[n + ".weight"], st[n + ".bias"], 1e-5)  # noqa: E731
    for i in range(layers):
        b = f"{prefix}transformer.resblocks.{i}."
        h = ln(x, b + "ln_1")
        q, k, v = (h @ st[b + "attn.in_proj_weight"].T + st[b + "attn.in_proj_bias"]).chunk(3, dim=-1)
        n, t, w = q.shape
        split = lambda y: y.view(n, t, heads, w // heads).transpose(1, 2)  # noqa: E731
        scores = split(q) @ split(k).transpose(-1, -2) / (w // heads) ** 0.5
        if mask is not None:
            scores = scores + mask
        a = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(n, t, w)
        x = x + a @ st[b + "attn.out_proj.weight"].T + st[b + "attn.out_proj.bias"]
        h = ln(x, b + "ln_2") @ st[b + "mlp.c_fc.weight"].T + st[b + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + h @ st[b + "mlp.c_proj.weight"].T + st[b + "mlp.c_proj.bias"]
    return x


def ref_text(st, texts):
    ids = torch.stack([ref_tokenize(t) for t in texts])
    x = st["token_embedding.weight"][ids] + st["positional_embedding"]
    causal = torch.full((CTX, CTX), float("-inf")).triu(1)
    x = ref_blocks(st, "", x, 2, TEXT_W // 64, causal)
    x = F.layer_norm(x, (TEXT_W,), st["ln_final.weight"], st["ln_final.bias"], 1e-5)
    return x[torch.arange(len(texts)), ids.argmax(-1)] @ st["text_projection"]


def ref_pixels(image: Image.Image) -> torch.Tensor:
    """torchvision's Resize(IMAGE, bicubic) + CenterCrop(IMAGE) + ToTensor + Normalize, step by step."""
    w, h = image.size
    if w <= h:
        size = (IMAGE, int(IMAGE * h / w))
    else:
        size = (int(IMAGE * w / h), IMAGE)
    image = image.resize(size, Image.BICUBIC)
    top, left = int(round((image.size[1] - IMAGE) / 2.0)), int(round((image.size[0] - IMAGE) / 2.0))
    image = image.crop((left, top, left + IMAGE, top + IMAGE))
    x = torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1) / 255.0
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    return (x - mean) / std


def ref_image(st, images):
    x = F.conv2d(torch.stack([ref_pixels(im) for im in images]), st["visual.conv1.weight"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    cls = st["visual.class_embedding"].expand(x.shape[0], 1, VIS_W)
    x = torch.cat([cls, x], dim=1) + st["visual.positional_embedding"]
    x = F.layer_norm(x, (VIS_W,), st["visual.ln_pre.weight"], st["visual.ln_pre.bias"], 1e-5)
    x = ref_blocks(st, "visual.", x, 2, VIS_W // 64)
    x = F.layer_norm(x[:, 0], (VIS_W,), st["visual.ln_post.weight"], st["visual.ln_post.bias"], 1e-5)
    return x @ st["visual.proj"]


def picture(w, h, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# --- tests ---------------------------------------------------------------------------------------------------
@pytest.fixture
def converted(tmp_path, omegaconf_names, one_torch_thread):
    state = openai_state()
    ckpt = tmp_path / "clip_sf_tiny.pth"
    save_uniir(ckpt, state, DictConfig({"model": {"name": "CLIPScoreFusion"}, "seed": 2023}))
    tok = make_tokenizer(tmp_path / "tok")
    out = tmp_path / "clip-sf"
    run = subprocess.run([sys.executable, "-m", "unimir", "convert", "clip-sf", str(ckpt), "--out", str(out),
                          "--tokenizer", str(tok)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "ViT-W128/8@32px, d=32" in run.stdout
    return state, out


def test_converted_encoder_matches_the_openai_reference(converted, monkeypatch):
    from unimir.encoders import fuse, load_encoder

    monkeypatch.setenv("UNIMIR_PRECISION", "fp32")
    state, out = converted
    enc = load_encoder(f"clip-sf:{out}", reuse=False)
    assert enc.fusion == "raw-sum" and enc.dim == EMBED
    long_text = "a red circle " * 10  # truncated: EOT must stay last
    texts = ["a red circle.", "Find the image of a blue square.", long_text]
    images = [picture(50, 37, 1), picture(40, 64, 2), picture(32, 32, 3)]
    items = [Item(texts[0]), Item(texts[1]), Item(long_text), Item(None, images[0]), Item(None, images[1]),
             Item("a green photo.", images[2])]
    feats, ok = enc.encode(items)
    assert ok.all()
    with torch.no_grad():
        txt = ref_text(state, texts + ["a green photo."]).numpy()
        img = ref_image(state, images).numpy()
    ref_txt = np.zeros((6, EMBED), np.float32)
    ref_img = np.zeros((6, EMBED), np.float32)
    ref_txt[[0, 1, 2, 5]] = txt
    ref_img[[3, 4, 5]] = img
    m_txt, m_img = np.array([1, 1, 1, 0, 0, 1.0]), np.array([0, 0, 0, 1, 1, 1.0])
    # UniIR's score fusion: raw projected parts summed under their masks, then normalised
    expected = ref_img * m_img[:, None] + ref_txt * m_txt[:, None]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    fused = enc.fuse(feats)
    cos = np.sum(fused * expected, axis=1)
    assert (cos >= 0.9999).all(), cos
    np.testing.assert_allclose(feats.text[[0, 1, 2, 5]], txt, rtol=1e-3, atol=1e-4)  # raw parts, not normalised
    assert abs(np.linalg.norm(feats.image[3]) - np.linalg.norm(img[0])) < 1e-3
    # the builtin's unit-sum fusion would give another vector for the image+text item
    assert float(fuse(feats, "unit-sum")[5] @ expected[5]) < 0.9999


def test_clip_sf_encoder_works_through_the_cli_index_and_search(converted, tmp_path, corpus):
    _, out = converted
    env = {"UNIMIR_PRECISION": "fp32"}
    import os

    index = tmp_path / "idx"
    run = subprocess.run([sys.executable, "-m", "unimir", "index", str(corpus["pool"]), "--out", str(index),
                          "--encoder", f"clip-sf:{out}", "--no-cache", "--device", "cpu"],
                         capture_output=True, text=True, env={**os.environ, **env})
    assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, "-m", "unimir", "search", str(index), "--text", "a red circle", "--json",
                          "--k", "3"], capture_output=True, text=True, env={**os.environ, **env})
    assert run.returncode == 0, run.stderr
    assert '"rank": 3' in run.stdout


def test_unexpected_pickled_class_is_refused_and_never_run(tmp_path, omegaconf_names):
    marker = tmp_path / "executed"
    ckpt = tmp_path / "evil.pth"
    save_uniir(ckpt, {"token_embedding.weight": torch.zeros(2, 2)}, DictConfig({}), scheduler=Evil(marker))
    with pytest.raises(CheckpointError, match=r"refusing to unpickle (subprocess|commands)\.call"):
        read_state_dict(ckpt)
    assert not marker.exists()
    # a class the test module defines is just as foreign as os.system, whatever it holds
    other = tmp_path / "other.pth"
    save_uniir(other, {"token_embedding.weight": torch.zeros(2, 2)}, NotAllowed())
    with pytest.raises(CheckpointError, match=r"refusing to unpickle .*NotAllowed"):
        read_state_dict(other)
    run = subprocess.run([sys.executable, "-m", "unimir", "convert", "clip-sf", str(ckpt), "--out",
                          str(tmp_path / "x")], capture_output=True, text=True)
    assert run.returncode == 2 and "refusing to unpickle" in run.stderr and ".call" in run.stderr
    assert not marker.exists() and not (tmp_path / "x").exists()


def test_missing_and_unexpected_keys_are_listed(tmp_path, omegaconf_names):
    state = openai_state()
    del state["visual.ln_post.bias"]
    state["transformer.resblocks.0.attn.extra_scale"] = torch.ones(1)
    ckpt = tmp_path / "bad.pth"
    save_uniir(ckpt, state, DictConfig({}))
    with pytest.raises(CheckpointError) as err:
        clip_sf(ckpt, tmp_path / "out", tokenizer=str(make_tokenizer(tmp_path / "tok")))
    message = str(err.value)
    assert "vision_model.post_layernorm.bias" in message
    assert "clip_model.transformer.resblocks.0.attn.extra_scale" in message
    assert not (tmp_path / "out").exists()


def test_tokenizer_of_another_vocabulary_is_refused(tmp_path, omegaconf_names, tiny_clip_dir):
    ckpt = tmp_path / "ok.pth"
    save_uniir(ckpt, openai_state(), DictConfig({}))
    with pytest.raises(UnimirError, match="tokenizer has .* tokens but the model's token embedding has"):
        clip_sf(ckpt, tmp_path / "out", tokenizer=str(tiny_clip_dir))
