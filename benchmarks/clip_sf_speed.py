"""CLIP-SF Large encoding speed: unimir's clip-sf encoder against plain transformers CLIPModel, same inputs.

    python -m benchmarks.clip_sf_speed [--images 8] [--texts 64] [--reps 3] [--out docs/bench/clip-sf.md]

Random weights of the released shape (ViT-L/14, 224 px, d = 768; the real file cannot be downloaded here) are
written as a converted ``clip-sf:`` directory with a synthetic 49,408-token SOT/EOT tokenizer. Variants, run
interleaved (A B C, A B C, ...) so a machine loaded by others slows all of them alike:

* ``transformers fp32``: ``CLIPImageProcessor`` + ``CLIPModel.get_image_features`` / tokenizer +
  ``get_text_features``, float32, the way a plain transformers user runs it;
* ``unimir clip-sf fp32``: ``ClipSFEncoder.embed_images`` / ``embed_texts`` with precision fp32 (the wrapper's own
  overhead: preprocessing, tokenisation, copies);
* ``unimir clip-sf auto``: the default precision (bf16 autocast on CPUs with AVX512-BF16/AMX, fp16 on CUDA).

Both unimir variants share the one model in memory with the plain path. A GPU run (batch 256, fp16) is made with
``--device cuda`` where one exists.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent


def large_config():
    from unimir.convert.from_uniir import ClipArch, hf_config

    arch = ClipArch(embed_dim=768, vocab_size=49408, context_length=77, text_width=768, text_layers=12,
                    text_mlp=3072, vision_width=1024, vision_layers=24, vision_mlp=4096, patch_size=14,
                    image_size=224)
    return arch, hf_config(arch, bos=49406, eos=49407, pad=49407)


def synthetic_tokenizer(directory: Path):
    """A WordLevel tokenizer with CLIP's vocabulary size and SOT/EOT ids (the real BPE files are not reachable)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(49405)}
    vocab.update({"<|unk|>": 49405, "<|startoftext|>": 49406, "<|endoftext|>": 49407})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 49406), ("<|endoftext|>", 49407)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|unk|>")
    fast.save_pretrained(directory)


def write_encoder_dir(directory: Path) -> None:
    from safetensors.torch import save_file
    from transformers import CLIPModel

    from unimir.encoders.clip_sf import FORMAT, FORMAT_VERSION, MARKER

    arch, config = large_config()
    torch.manual_seed(0)
    model = CLIPModel(config)
    config.save_pretrained(directory)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()
               if not k.endswith("position_ids")}, str(directory / "model.safetensors"), metadata={"format": "pt"})
    del model
    synthetic_tokenizer(directory)
    (directory / MARKER).write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                                                "fusion": "raw-sum", "name": arch.name, "tokenizer": "synthetic"}))


def make_inputs(n_images: int, n_texts: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(n_images)]
    texts = [" ".join(f"w{int(x)}" for x in rng.integers(0, 49405, int(rng.integers(8, 40))))
             for _ in range(n_texts)]
    return images, texts


def main(argv: list[str] | None = None) -> int:
    from transformers import CLIPImageProcessor

    from benchmarks.machine import describe
    from unimir.devices import autocast_dtype, resolve_device
    from unimir.encoders.clip_sf import ClipSFEncoder

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=8, help="images per batch")
    p.add_argument("--texts", type=int, default=64, help="texts per batch")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions per variant")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "docs" / "bench" / "clip-sf.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    images, texts = make_inputs(args.images, args.texts)
    with tempfile.TemporaryDirectory() as tmp:
        write_encoder_dir(Path(tmp))
        auto = ClipSFEncoder(tmp, device=str(device))
    model, tokenizer = auto.model, auto.tokenizer
    exact = ClipSFEncoder.__new__(ClipSFEncoder)  # the same loaded model, float32
    exact.__dict__.update(auto.__dict__)
    exact.amp = None
    processor = CLIPImageProcessor(do_resize=True, size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})

    @torch.inference_mode()
    def plain_images():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        out = model.get_image_features(pixel_values=pixels)
        return (out if isinstance(out, torch.Tensor) else out.pooler_output).float().cpu().numpy()

    @torch.inference_mode()
    def plain_texts():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(device)
        out = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return (out if isinstance(out, torch.Tensor) else out.pooler_output).float().cpu().numpy()

    variants = {"transformers fp32": (plain_images, plain_texts),
                "unimir clip-sf fp32": (lambda: exact.embed_images(images), lambda: exact.embed_texts(texts)),
                "unimir clip-sf auto": (lambda: auto.embed_images(images), lambda: auto.embed_texts(texts))}
    outputs = {name: (fi(), ft()) for name, (fi, ft) in variants.items()}  # warm-up, and outputs to compare
    seconds = {name: {"images": [], "texts": []} for name in variants}
    for _ in range(args.reps):
        for name, (fi, ft) in variants.items():
            for kind, fn in (("images", fi), ("texts", ft)):
                start = time.perf_counter()
                fn()
                seconds[name][kind].append(time.perf_counter() - start)
    base = outputs["transformers fp32"]

    def min_cos(a, b):
        a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
        return float(np.sum(a * b, axis=1).min())

    rows = []
    plain = {k: float(np.median(seconds["transformers fp32"][k])) for k in ("images", "texts")}
    for name in variants:
        med = {k: float(np.median(seconds[name][k])) for k in ("images", "texts")}
        rows.append((name, args.images / med["images"], plain["images"] / med["images"], args.texts / med["texts"],
                     plain["texts"] / med["texts"], min_cos(outputs[name][0], base[0]),
                     min_cos(outputs[name][1], base[1])))
    m = describe()
    amp = autocast_dtype(device)
    lines = [
        "# CLIP-SF Large encoding speed (unimir clip-sf vs plain transformers CLIPModel)", "",
        f"Command: `python -m benchmarks.clip_sf_speed --images {args.images} --texts {args.texts} --reps {args.reps} "
        f"--device {args.device} --threads {args.threads}`", "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores of {m['cores']}, torch {m['versions']['torch']}, "
        f"transformers {m['versions']['transformers']}, {args.threads} torch threads, {m['date']}; 1-min load average "
        f"{m['load_start'][0]:.1f} at the start. Other jobs may share the machine, so absolute "
        "numbers are noisy; the ratios come from one run with the variants interleaved.", "",
        f"Model: ViT-L/14 @ 224 px + 12-layer text tower, d = 768 (random weights of the released shape). "
        f"Images: {args.images} per batch, 320x240 RGB, preprocessing included. Texts: {args.texts} per batch, "
        f"8-40 words. Median of {args.reps} interleaved repetitions after one warm-up. `auto` precision here: "
        f"{'float32' if amp is None else str(amp).replace('torch.', '')} autocast.", "",
        "| variant | images/s | vs transformers | texts/s | vs transformers | min cosine to fp32 (images) | "
        "min cosine to fp32 (texts) |",
        "|---|---:|---:|---:|---:|---:|---:|"]
    for name, ips, ir, tps, tr, ci, ct in rows:
        lines.append(f"| {name} | {ips:.2f} | {ir:.2f}x | {tps:.1f} | {tr:.2f}x | {ci:.5f} | {ct:.5f} |")
    lines += ["", "GPU: no GPU was available to this run (the development machine has none), so the batch-256 fp16 "
              "GPU figures were not measured." if device.type == "cpu" else
              f"GPU: {torch.cuda.get_device_name(device)}.", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
