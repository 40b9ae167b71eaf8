"""Helpers for tests and benchmarks of the server: a small sample pool and an in-process server thread."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from PIL import Image, ImageDraw

from ..data.records import Candidate, Modality

COLOURS = {"red": (214, 40, 40), "green": (46, 160, 67), "blue": (37, 99, 235), "orange": (245, 140, 30),
           "purple": (126, 58, 180), "teal": (20, 150, 150)}
SHAPES = ("circle", "square", "triangle")
TEXTS = ["A golden retriever catches a frisbee in the park.", "A bowl of hot tomato soup with fresh basil.",
         "The stock market closed lower after a volatile session.", "A red sports car parked on a city street.",
         "Snow-covered mountains under a clear blue sky.", "A cup of espresso next to a croissant."]


def draw(colour: str, shape: str, size: int = 96) -> Image.Image:
    """A flat clip-art picture: one coloured shape on a light background."""
    im = Image.new("RGB", (size, size), (248, 248, 246))
    d = ImageDraw.Draw(im)
    m = size // 6
    box = (m, m, size - m, size - m)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=fill)
    return im


def sample_pool(root: "str | Path", colours: "list[str] | None" = None) -> list[Candidate]:
    """Write PNGs under ``root`` and return candidates of all three modalities. Ids include '/' and ':'
    (``shapes/red_circle.png``, ``cap:red_circle``, ``txt:0``), like folder-ingested and M-BEIR ids."""
    root = Path(root)
    (root / "shapes").mkdir(parents=True, exist_ok=True)
    out: list[Candidate] = []
    for colour in colours or list(COLOURS):
        for shape in SHAPES:
            rel = f"shapes/{colour}_{shape}.png"
            draw(colour, shape).save(root / rel)
            out.append(Candidate(rel, Modality.IMAGE, None, rel))
            out.append(Candidate(f"cap:{colour}_{shape}", Modality.IMAGE_TEXT, f"a {colour} {shape}", rel))
    for i, text in enumerate(TEXTS):
        out.append(Candidate(f"txt:{i}", Modality.TEXT, text))
    return out


def png_bytes(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


class ServerThread:
    """Run an ASGI app on uvicorn in a background thread, on a socket bound before start (no port race).

    >>> with ServerThread(app) as server:
    ...     httpx.get(server.url + "/health")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, log_level=log_level, lifespan="off", access_log=False,
                                timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
