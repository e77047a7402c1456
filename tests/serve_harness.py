"""A real `unlearnable serve` application on a free loopback port, for the API and browser tests."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import make_learnable

TOKEN = "test-token-" + "x" * 20
TINY = dict(epochs=1, steps=2, working_size=16, unit_size=4, reference_per_class=8)


def reference_npz(path: Path) -> str:
    x, y = make_learnable(240, size=16, channels=1, classes=4, seed=3)
    np.savez(path, x_train=x[:160], y_train=y[:160], x_test=x[160:], y_test=y[160:],
             class_names=np.array(["a", "b", "c", "d"]))
    return str(path)


def photo_png(i: int, w: int = 40, h: int = 32, step: int = 4) -> bytes:
    """A w x h PNG cut from one of scikit-learn's sample photos (every ``step``-th pixel)."""
    from sklearn.datasets import load_sample_images
    china = load_sample_images().images[0]
    buf = io.BytesIO()
    Image.fromarray(china[20 * i:20 * i + step * h:step, 30 * i:30 * i + step * w:step]).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Server:
    url: str
    jobs: object
    work: Path
    server: object
    thread: threading.Thread

    def call(self, method: str, path: str, body=None, *, headers=None, token: str | None = TOKEN,
             query_token: bool = False):
        """(status, parsed JSON or raw bytes)."""
        url = self.url + path
        if query_token:
            url += ("&" if "?" in url else "?") + f"token={token}"
        h = dict(headers or {})
        if token is not None and not query_token:
            h["X-Token"] = token
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, data, kind = r.status, r.read(), r.headers.get("content-type", "")
        except urllib.error.HTTPError as e:
            status, data, kind = e.code, e.read(), e.headers.get("content-type", "")
        return status, (json.loads(data) if "json" in kind else data)

    def wait(self, job: str, task: str = "protect", timeout: float = 300) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            _, d = self.call("GET", f"/api/jobs/{job}")
            if d[task]["state"] not in ("queued", "running"):
                return d
            time.sleep(0.3)
        raise TimeoutError(f"{task} of {job} still running after {timeout} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def start_server(work: Path, options, token: str = TOKEN) -> Server:
    import uvicorn

    from unlearnable.serve import bind
    from unlearnable.serve.app import create_app
    from unlearnable.serve.jobs import Jobs
    jobs = Jobs(work, options)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(jobs, token), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    t0 = time.time()
    while not server.started:
        if time.time() - t0 > 30 or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    return Server(f"http://127.0.0.1:{sock.getsockname()[1]}", jobs, work, server, thread)
