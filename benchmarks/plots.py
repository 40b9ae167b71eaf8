"""PNG figures of a run's results (matplotlib, Agg backend). Each function returns the file name it wrote."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

STYLE = {"dense flat": ("tab:blue", "o"), "dense HNSW": ("tab:cyan", "s"), "dense": ("tab:blue", "o"),
         "generative": ("tab:red", "^"), "generative-rerank": ("tab:orange", "v"), "quantize": ("tab:green", "D")}


def _save(fig, folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(folder / name, dpi=110)
    plt.close(fig)
    return name


def efficiency(scaling: dict, folder: Path) -> str:
    """Queries/s against pool size, one line per mode: batch 1 (left) and batched (right)."""
    s = scaling["settings"]
    sizes = [row["size"] for row in scaling["sizes"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, title in ((axes[0], "single", "one query per call"),
                           (axes[1], "batched", f"{s['batch']} queries per call")):
        for mode in scaling["modes"]:
            color, marker = STYLE.get(mode, (None, "o"))
            ax.plot(sizes, [row["modes"][mode][key]["per_s"] for row in scaling["sizes"]], marker=marker,
                    color=color, label=mode)
        ax.set(xscale="log", yscale="log", xlabel="candidates in the pool", title=title)
        ax.set_xticks(sizes, [_short(n) for n in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("queries / s (query encoding excluded)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Search throughput against pool size: k = {s['k']}, {s['beams']} beams, "
                 f"{scaling['torch_threads']} threads, synthetic d = 384 pool", fontsize=10)
    return _save(fig, folder, "bench_efficiency.png")


def matched_recall(scaling: dict, folder: Path) -> str:
    """Batch-1 queries/s against recall@10 vs flat at the largest pool: the HNSW efSearch sweep as a curve, every
    mode as a point."""
    row = scaling["sizes"][-1]
    sweep = row["hnsw_sweep"]
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    ax.plot([r["recall_vs_flat"] for r in sweep], [r["per_s"] for r in sweep], color="tab:cyan", alpha=0.6,
            label="raw FAISS HNSW, efSearch sweep")
    for r in sweep:
        ax.annotate(f"ef {r['ef_search']}", (r["recall_vs_flat"], r["per_s"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    for mode in scaling["modes"]:
        color, marker = STYLE.get(mode, (None, "o"))
        m = row["modes"][mode]
        ax.scatter([m["recall_vs_flat"]], [m["single"]["per_s"]], color=color, marker=marker, s=50, label=mode,
                   zorder=3)
    ax.set(yscale="log", xlim=(-0.02, 1.05), xlabel="recall@10 against exact (flat) search",
           ylabel="queries / s, one query per call",
           title=f"Speed against agreement with exact search, {_short(row['size'])} candidates")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, folder, "bench_matched_recall.png")


def _short(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else \
        f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def quality(quality: dict, folder: Path) -> str:
    """R@5 per task, one bar per mode, the random baseline as a tick."""
    setting = quality.get("summary_setting")
    rows = [r for r in quality["rows"] if r.get("setting") == setting] if setting else quality["rows"]
    tasks = list(dict.fromkeys(r["queries"] for r in rows))
    modes = quality["modes"]
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, mode in enumerate(modes):
        values = {r["queries"]: 100 * r["recall"]["5"] for r in rows if r["mode"] == mode}
        ax.bar([t + i * width for t in range(len(tasks))], [values[t] for t in tasks], width,
               color=STYLE.get(mode, (None,))[0], label=mode)
    randoms = {r["queries"]: 100 * r["random"]["5"] for r in rows if r["mode"] == "dense"}
    ax.scatter([t + 0.4 - width / 2 for t in range(len(tasks))], [randoms[t] for t in tasks], marker="_", s=400,
               color="black", label="random", zorder=3)
    labels = {r["queries"]: f"{r['task']}\n{r['queries'].removeprefix('mbeir_demo_')}" for r in rows}
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(tasks))], [labels[t] for t in tasks], fontsize=8)
    title = "Demo corpus: Recall@5 per task and mode" + (f" ({setting})" if setting else "")
    ax.set(ylabel="Recall@5 (%)", title=title)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, folder, "bench_quality.png")


def decoding(decoding: dict, folder: Path) -> str:
    """Queries/s of both decoders against beam width."""
    rows = decoding["rows"]
    beams = [r["beams"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(beams, [r["fast_qps"] for r in rows], marker="o", label="unimir constrained_beam_search")
    ax.plot(beams, [r["reference_qps"] for r in rows], marker="s", label="generate + prefix_allowed_tokens_fn")
    ax.set(yscale="log", xlabel="beams", ylabel="queries / s", xticks=beams,
           title=f"Constrained decoding, batch {rows[0]['batch']}, {rows[0]['threads']} threads")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, folder, "bench_decoding.png")
