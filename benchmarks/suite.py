"""The benchmark suite: runs every section, gathers the figures into one dict, renders ``docs/benchmarks.md``.

Sections: encoding (with the timed from-scratch build of the demo index), scaling (latency and throughput against
pool size), quality (recall on the demo corpus), footprint (disk and memory), decoding (constrained beam search
against the reference decoder) and server (load test). A section that fails is reported as failed; the others
still run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

from . import decode_speed, demo_index, encode, footprint, generative_latency, load_server, machine, quality, scaling
from .report import render
from .targets import targets
from .timing import Stopwatch

SECTIONS = ("encoding", "scaling", "quality", "footprint", "decoding", "server")
DEFAULT_OUT = machine.REPO / "docs" / "benchmarks.md"


class Run:
    """State shared by the sections of one run: options, a scratch folder, the demo index, the results."""

    def __init__(self, quick: bool, sections: tuple[str, ...], scratch: Path):
        self.quick, self.sections, self.scratch = quick, sections, scratch
        self.results: dict[str, Any] = {"quick": quick, "sections": list(sections), "section_s": {},
                                        "section_load": {}}
        self._demo = None

    def demo(self):
        """The demo index, built from scratch on first use: (Index, build seconds)."""
        if self._demo is None:
            self._demo = demo_index.build(self.scratch / "demo-index")
        return self._demo

    @property
    def synthetic_dir(self) -> Path:
        return self.scratch / "synthetic"

    def section(self, name: str, fn: Callable[[], dict]) -> None:
        if name not in self.sections:
            return
        print(f"[bench] {name} ...", flush=True)
        with Stopwatch() as sw:
            try:
                self.results[name] = fn()
            except Exception as exc:  # a failed section is reported, the suite goes on
                traceback.print_exc()
                self.results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        self.results["section_s"][name] = sw.seconds
        self.results["section_load"][name] = machine.load_average()[0]
        print(f"[bench] {name} done in {sw.seconds:.0f} s", flush=True)


def _encoding(run: Run) -> dict:
    from unimir.encoders import load_encoder

    rows = encode.run(run.quick)
    index, build_s = run.demo()
    return {"rows": rows, "bf16": bool(getattr(load_encoder("builtin"), "bf16", False)),
            "demo_build_s": build_s, "demo_items": len(index),
            "demo_modalities": dict(index.manifest.modality_counts)}


def _quality(run: Run) -> dict:
    info = demo_index.trained(run.demo()[0], run.quick)
    run.results["trained_index"] = info
    return quality.run(Path(info["path"]))


def _footprint(run: Run) -> dict:
    info = run.results.get("trained_index")
    demo = Path(info["path"]) if info else None
    synthetic = run.synthetic_dir if (run.synthetic_dir / "fused.npy").exists() else None
    return footprint.run(demo, synthetic, batch=scaling.settings(run.quick).batch, demo_batch=quality.BATCH)


def _decoding(run: Run) -> dict:
    # pool-size dependence of plain generative latency, interleaved rounds (the scaling section times sizes apart)
    return {"rows": decode_speed.run(run.quick),
            "pool_latency": generative_latency.run(quick=True, threads=1, dense=False)}


def execute(quick: bool, sections: tuple[str, ...] = SECTIONS) -> dict:
    with Stopwatch() as total, tempfile.TemporaryDirectory(prefix="unimir-bench-") as tmp:
        run = Run(quick, sections, Path(tmp))
        run.results["machine"] = machine.describe()
        run.section("encoding", lambda: _encoding(run))
        run.section("scaling", lambda: scaling.run(quick, keep=run.synthetic_dir))
        run.section("quality", lambda: _quality(run))
        run.section("footprint", lambda: _footprint(run))
        shutil.rmtree(run.synthetic_dir, ignore_errors=True)  # gigabytes at 1M items
        run.section("decoding", lambda: _decoding(run))
        run.section("server", lambda: load_server.run(quick))
        run.results["machine"]["load_end"] = machine.load_average()
    run.results["wall_s"] = total.seconds
    run.results["targets"] = targets(run.results)
    return run.results


def write(results: dict, out: Path, json_out: Path | None = None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(results, out.parent / "img", out.parent))
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=1, default=str))
