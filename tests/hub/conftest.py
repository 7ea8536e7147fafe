"""Fixtures that run the Hub tests against a local Hub-compatible server (tests/hub/hub_server.py).

- `hub_server` (session): the server, started as a subprocess on 127.0.0.1 on a free port and stopped by its PID
  at the end of the session. Attributes: `endpoint`, `root` (its storage), `user` (namespace of repos created
  without one), `pid`, `log_path`; methods: `fail_next(path_regex, status=500, count=1, method=None,
  mode="status")`, `requests()` (the request log: dicts with method, path, headers with lower-case names, status), `reset()`,
  `set_multipart_chunk_size(n)`.
- `hub_env` (function): points huggingface_hub and transformers at that server for one test and returns a
  `HubEnv` (`endpoint`, `token`, `hf_home`, `hub_cache`, `server`). The server's request log and pending failures
  are cleared first, so `hub_env.server.requests()` holds this test's requests only.
- `hub_repo_id` (function): a fresh "<user>/<test name>-<random>" repo id (not created).

How the endpoint is made effective (huggingface_hub 2.4.0, transformers 5.24.0). `huggingface_hub.constants` reads
the environment once, at import: ENDPOINT and HUGGINGFACE_CO_URL_TEMPLATE (from HF_ENDPOINT), HF_HUB_OFFLINE,
HF_HUB_DISABLE_XET, HF_HOME and every path derived from it (HF_HUB_CACHE, HF_TOKEN_PATH, ...). Setting environment
variables is therefore enough only for subprocesses and for a process that has not imported huggingface_hub yet;
in this pytest process other tests may already have imported it (with HF_HUB_OFFLINE=1 from the Makefile), so
`hub_env` sets the environment (for subprocesses) AND monkeypatches those constants. Everything else reads the
constants at call time: `hf_hub_download`/`hf_hub_url` format the URL template, `snapshot_download` and
`HfApi()` take `constants.ENDPOINT` when created, `is_offline_mode()` (also used by transformers) reads
`constants.HF_HUB_OFFLINE`, and the token comes from `os.environ["HF_TOKEN"]` on every request. Two objects keep
the endpoint they were created with and are patched too: the module-level `huggingface_hub.hf_api.api`
(behind `upload_file`, `create_repo`, ... and `ModelCard.push_to_hub`) and transformers' shared HfApi
(`transformers.utils.hub._hf_api`, used by `push_to_hub` and `from_pretrained`), which is reset so it is rebuilt
with the test endpoint (and reset again afterwards if the test created it). An `HfApi` instance that project
code creates and keeps before the test keeps the old endpoint: create HfApi objects when they are used, or pass
`endpoint=`. Not patched: `huggingface_hub.utils._http._HUB_ORIGINS` (only used to keep the token on redirects
between Hub hosts; this server never redirects) and the datasets library's own copy of the endpoint.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

SERVER_SCRIPT = Path(__file__).with_name("hub_server.py")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never goes through a proxy


class HubServer:
    """A running tests/hub/hub_server.py subprocess, with its test-only admin endpoints."""

    def __init__(self, root: Path, log_path: Path, user: str = "testuser", start_timeout: float = 30.0):
        self.root, self.log_path, self.user = root, log_path, user
        port_file = log_path.with_name(log_path.name + ".port")
        port_file.unlink(missing_ok=True)
        self._log = open(log_path, "ab")
        command = [sys.executable, str(SERVER_SCRIPT), "--port", "0", "--root", str(root)]
        command += ["--port-file", str(port_file), "--user", user]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        deadline = time.monotonic() + start_timeout
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"The Hub test server did not start:\n{self.log_text()}")
            time.sleep(0.05)
        self.endpoint = f"http://127.0.0.1:{int(port_file.read_text())}"
        while True:  # the port file is written once the socket listens; check that it answers anyway
            try:
                self.requests()
                break
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"The Hub test server does not answer:\n{self.log_text()}") from None
                time.sleep(0.05)

    def _admin(self, method: str, path: str, payload: dict | None = None):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.endpoint + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with _NO_PROXY.open(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def fail_next(
        self, path_regex: str, status: int = 500, count: int = 1, method: str | None = None, mode: str = "status"
    ) -> None:
        """Make the next `count` requests whose path (with query) matches `path_regex` (and `method`, if given)
        fail with `status`, or with mode="drop" have the connection closed without an answer."""
        payload = {"path_regex": path_regex, "status": status, "count": count, "method": method, "mode": mode}
        self._admin("POST", "/_admin/fail-next", payload)

    def requests(self) -> list[dict]:
        """Requests since the last reset, admin calls excluded: [{method, path, headers, status}], header names in
        lower case, status None while a request is being answered."""
        return self._admin("GET", "/_admin/requests")

    def reset(self) -> None:
        """Clear the request log, pending failures and the multipart setting (repos are kept)."""
        self._admin("POST", "/_admin/reset", {})

    def set_multipart_chunk_size(self, chunk_size: int | None) -> None:
        """LFS objects larger than `chunk_size` are then uploaded multipart (None: always a single PUT)."""
        self._admin("POST", "/_admin/config", {"multipart_chunk_size": chunk_size})

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Terminate the process by its PID, and kill it if it has not exited after 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


@dataclass
class HubEnv:
    endpoint: str
    token: str
    hf_home: Path
    hub_cache: Path
    server: HubServer


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory) -> HubServer:
    base = tmp_path_factory.mktemp("hub_server")
    server = HubServer(base / "root", base / "server.log")
    yield server
    server.stop()


def _hub_constants(endpoint: str, hf_home: Path) -> dict:
    import huggingface_hub.constants as c

    hub_cache = str(hf_home / "hub")
    values = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": c.HF_URL_HOSTS | {urlsplit(endpoint).hostname},
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": hub_cache,
        "HUGGINGFACE_HUB_CACHE": hub_cache,
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
    }
    # Paths under HF_HOME that only some versions have.
    for name in ("AGENT_HARNESSES_PATH", "CHECK_FOR_UPDATE_DONE_PATH", "CHECK_FOR_SKILL_UPDATE_DONE_PATH"):
        if hasattr(c, name):
            values[name] = str(hf_home / Path(getattr(c, name)).name)
    return values


@pytest.fixture
def hub_env(hub_server, tmp_path, monkeypatch) -> HubEnv:
    endpoint = hub_server.endpoint
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    token = f"hf_test{secrets.token_hex(12)}"
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_TOKEN": token,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in (
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_XET_CACHE",
        "HF_ASSETS_CACHE",
        "HUGGINGFACE_HUB_CACHE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"])))

    import huggingface_hub.constants
    import huggingface_hub.hf_api
    from huggingface_hub import close_session

    for name, value in _hub_constants(endpoint, hf_home).items():
        monkeypatch.setattr(huggingface_hub.constants, name, value)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    close_session()  # a client created earlier may have been built with other proxy settings
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None:
        monkeypatch.setattr(transformers_hub, "_hf_api", None)

    hub_server.reset()
    log_size = len(hub_server.log_text())
    yield HubEnv(endpoint=endpoint, token=token, hf_home=hf_home, hub_cache=hf_home / "hub", server=hub_server)

    if transformers_hub is None and "transformers.utils.hub" in sys.modules:
        sys.modules["transformers.utils.hub"]._hf_api = None  # built during this test with the test endpoint
    close_session()
    new_log = hub_server.log_text()[log_size:]
    assert "Traceback" not in new_log, f"The Hub test server failed on a request:\n{new_log}"


@pytest.fixture
def hub_repo_id(hub_env, request) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-.")[:60]
    return f"{hub_env.server.user}/{name}-{secrets.token_hex(4)}"
