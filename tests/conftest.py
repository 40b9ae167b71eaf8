"""Shared fixtures: an isolated cache, a tiny M-BEIR corpus of coloured shapes, and a tiny random CLIP on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 40, 220), "yellow": (235, 215, 30),
           "purple": (140, 40, 170), "black": (10, 10, 10)}
SHAPES = ("circle", "square", "triangle")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Never touch the user's embedding cache from tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("UNIMIR_CACHE_DIR", str(tmp_path_factory.mktemp("unimir-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: thread start-up costs more than it saves (and CI machines are shared)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def draw(colour: str, shape: str, size: int = 48) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    box = (size // 6, size // 6, size - size // 6, size - size // 6)
    if shape == "circle":
        d.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        d.rectangle(box, fill=COLOURS[colour])
    else:
        d.polygon([(size // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=COLOURS[colour])
    return im


def make_corpus(root: Path) -> dict[str, Path]:
    """A tiny dataset in the M-BEIR layout: one image and one caption per (colour, shape); 18 + 18 candidates,
    with T→I and I→T test queries, qrels and an instructions TSV. Dataset id 10."""
    (root / "mbeir_images" / "shapes").mkdir(parents=True, exist_ok=True)
    (root / "cand_pool").mkdir(exist_ok=True)
    (root / "query" / "test").mkdir(parents=True, exist_ok=True)
    (root / "qrels" / "test").mkdir(parents=True, exist_ok=True)
    (root / "instructions").mkdir(exist_ok=True)
    cands, t2i, i2t = [], [], []
    n = 0
    for colour in COLOURS:
        for shape in SHAPES:
            rel = f"mbeir_images/shapes/{colour}_{shape}.png"
            draw(colour, shape).save(root / rel)
            img_did, txt_did = f"10:{n}", f"10:{n + 1}"
            cands.append({"did": img_did, "txt": None, "img_path": rel, "modality": "image", "src_content": None})
            cands.append({"did": txt_did, "txt": f"a {colour} {shape}", "img_path": None, "modality": "text",
                          "src_content": None})
            t2i.append({"qid": f"10:{n}", "query_txt": f"{colour} {shape}", "query_img_path": None,
                        "query_modality": "text", "query_src_content": None, "pos_cand_list": [img_did],
                        "neg_cand_list": [], "task_id": 0})
            i2t.append({"qid": f"10:{n + 1}", "query_txt": None, "query_img_path": rel, "query_modality": "image",
                        "query_src_content": None, "pos_cand_list": [txt_did], "neg_cand_list": [], "task_id": 3})
            n += 2
    paths = {"pool": root / "cand_pool" / "mbeir_shapes_cand_pool.jsonl",
             "t2i": root / "query" / "test" / "mbeir_shapes_task0_test.jsonl",
             "i2t": root / "query" / "test" / "mbeir_shapes_task3_test.jsonl",
             "qrels_t2i": root / "qrels" / "test" / "mbeir_shapes_task0_test_qrels.txt",
             "instructions": root / "instructions" / "query_instructions.tsv", "root": root}
    for key, rows in (("pool", cands), ("t2i", t2i), ("i2t", i2t)):
        paths[key].write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths["qrels_t2i"].write_text("".join(f"{q['qid']} 0 {q['pos_cand_list'][0]} 1 0\n" for q in t2i))
    paths["instructions"].write_text(
        "query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4\n"
        "text\timage\tshapes\t10\tFind an image of the shape.\tShow me a picture of this shape\t\t\n"
        "image\ttext\tshapes\t10\tDescribe this shape.\tFind a caption for this image\t\t\n")
    return paths


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return make_corpus(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A randomly initialised 75K-parameter CLIP with a word-level tokenizer, saved like a hub checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    words = ["<pad>", "<bos>", "<eos>", "<unk>"] + sorted(
        {w for c in COLOURS for s in SHAPES for w in f"a {c} {s}".split()}
        | {"find", "an", "image", "of", "the", "shape.", "show", "me", "picture", "this", "describe", "caption",
           "for", "image.", "circle.", "square.", "triangle."})
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    import torch

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_encoder(tiny_clip_dir):
    from unimir.encoders import load_encoder

    return load_encoder(f"hf:{tiny_clip_dir}")
