"""A static web server on 127.0.0.1 for the tests that download: real HTTP, no network."""
from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from pathlib import Path


@contextlib.contextmanager
def serve_folder(folder: Path):
    "Serve `folder` on a free loopback port for the duration of the `with` block; yields the base URL."
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True).start()
    try: yield f'http://127.0.0.1:{httpd.server_address[1]}'
    finally:
        httpd.shutdown()
        httpd.server_close()
