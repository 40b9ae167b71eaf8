"""``unimir serve``: an HTTP API and a search page over one index (needs the ``unimir[serve]`` extra).

``serve(index_dir, host=, port=, root=, max_upload_bytes=)`` loads the index and its encoder once and runs
uvicorn; ``create_app(index, max_upload_bytes=)`` builds the FastAPI app (tests drive it with a test client).
Both go through one :class:`~unimir.serve.backend.SearchBackend`.
"""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UnimirError
from .backend import DEFAULT_MAX_UPLOAD_BYTES

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..index import Index

__all__ = ["serve", "create_app", "DEFAULT_MAX_UPLOAD_BYTES"]


class MissingServerDependency(UnimirError):
    http_status = 500


def _require_server_packages() -> None:
    try:
        import fastapi  # noqa: F401
        import fastapi_offline  # noqa: F401  (Swagger UI's files for /docs, no CDN)
        import python_multipart  # noqa: F401  (form uploads)
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MissingServerDependency(f"unimir serve needs the 'serve' extra ({exc.name} is missing): "
                                      "pip install 'unimir[serve]'") from None


def create_app(index: "Index", max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, *,
               warm_up: bool = False) -> "FastAPI":
    """The FastAPI app for ``index``; ``warm_up`` runs one query first so no request pays lazy set-up."""
    _require_server_packages()
    from .app import create_app as _create_app

    return _create_app(index, max_upload_bytes, warm_up=warm_up)


def serve(index_dir: "str | Path", host: str = "127.0.0.1", port: int = 8000, root: "str | Path | None" = None,
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, device: str | None = None) -> None:
    """Load the index at ``index_dir`` (``root`` overrides its data root; ``device``: where models run) and serve
    it until interrupted.

    The port is bound first, so a busy port fails at once with one line, before the index is loaded and before
    anything claims to be serving.
    """
    _require_server_packages()
    import uvicorn

    from ..index import Index

    sock = bind_socket(host, port)
    try:
        index = Index.load(Path(index_dir), root=root, device=device)
        app = create_app(index, max_upload_bytes, warm_up=True)
        logging.getLogger("unimir.serve").setLevel(logging.INFO)
        config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_keep_alive=30,
                                server_header=False)
        shown = f"[{host}]" if ":" in host else host
        print(f"unimir: serving {len(index)} items from {index_dir} on http://{shown}:{port}/ "
              f"(API docs at /docs; modes: {', '.join(index.modes)})", flush=True)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), or a one-line UnimirError saying why not."""
    if not 1 <= port <= 65535:
        raise PortError(f"port must be from 1 to 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortError(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortError(f"port {port} on {host} is already in use: stop the other server or pass --port") \
                from None
        raise PortError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


class PortError(UnimirError):
    http_status = 500
