"""A small Hugging Face Hub-compatible HTTP server for the Hub tests (standard library only).

It speaks the subset of the Hub's HTTP API that the real `huggingface_hub` (2.4) and `transformers` clients
use to create repos, upload (regular + Git LFS, basic and multipart), commit, list and download files, so tests
drive it through those clients instead of mocking them. Xet storage is not implemented: clients must run with
`HF_HUB_DISABLE_XET=1`.

    python tests/hub/hub_server.py --port 0 --root DIR --port-file FILE

Everything a real remote keeps lives on disk under `--root` (a restarted server on the same root sees the same
repos): `repos/<type>/<namespace>/<name>/repo.json` (visibility, branches, tags, pull-request refs),
`.../commits/<sha>.json` (one flat file table per commit), `blobs/` (regular files by git blob sha1) and `lfs/`
(LFS objects by sha256). Request headers are never written to disk.

Not the real Hub: any Bearer token is accepted (and required for writes and for private repos), every repo id has
a namespace (`--user`, default "testuser", when none is given), there is no cardData/safetensors metadata in repo
info, no pagination (lists come back whole) and request bodies are read into memory (fine for test-sized files).

Test-only endpoints (not logged):
- `POST /_admin/fail-next` {"path_regex", "method"?, "status"?: 500, "count"?: 1, "mode"?: "status" | "drop"}:
  the next `count` requests whose method and path (with query) match fail with `status`, or, with "drop", have
  their body read and the connection closed without any response.
- `GET /_admin/requests`: the request log, [{method, path, headers, status}] in arrival order (header names in
  lower case; injected failures also carry "injected": "status" | "drop").
- `POST /_admin/reset`: clear the request log, pending failures and the multipart setting (repos are kept).
- `POST /_admin/config` {"multipart_chunk_size": int | null}: LFS objects larger than this go multipart.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import fnmatch
import hashlib
import json
import os
import re
import secrets
import signal
import sys
import tempfile
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files of 10 MB and more in LFS whatever their name
DEFAULT_USER = "testuser"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# Extensions the Hub's default .gitattributes sends to LFS (the new repo's first commit contains them).
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gguf *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz"
    " *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors *.tar *.tar.* *.tflite *.tgz *.wasm"
    " *.xz *.zip *.zst *tfevents*"
).split()
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()


class HubError(Exception):
    """An HTTP error answered the way the Hub does: status, `X-Error-Code`, `X-Error-Message`, JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **body):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}
        self.body = {"error": message, **body}


def repo_not_found(repo_id: str) -> HubError:
    return HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Storage:
    """Repos, commits and objects on disk. Mutations hold `lock`; files are replaced atomically."""

    def __init__(self, root: Path):
        self.root = root
        self.lock = threading.RLock()
        for sub in ("repos", "blobs", "lfs", "uploads"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    # -- objects --
    def blob_path(self, sha1: str) -> Path:
        return self.root / "blobs" / sha1[:2] / sha1

    def put_blob(self, data: bytes) -> str:
        sha1 = git_blob_sha1(data)
        if not self.blob_path(sha1).exists():
            write_atomic(self.blob_path(sha1), data)
        return sha1

    def lfs_path(self, oid: str) -> Path:
        return self.root / "lfs" / oid[:2] / oid

    def lfs_size(self, oid: str) -> int | None:
        path = self.lfs_path(oid)
        return path.stat().st_size if path.exists() else None

    def put_lfs(self, oid: str, size: int, data: bytes) -> None:
        if len(data) != size:
            raise HubError(400, f"Size mismatch for LFS object {oid}: expected {size}, got {len(data)}")
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"Content of the uploaded object does not match its oid {oid}")
        if not self.lfs_path(oid).exists():
            write_atomic(self.lfs_path(oid), data)

    # -- repos --
    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / repo_type / repo_id

    def load_repo(self, repo_type: str, repo_id: str) -> dict:
        path = self.repo_dir(repo_type, repo_id) / "repo.json"
        if not path.exists():
            raise repo_not_found(repo_id)
        return json.loads(path.read_text())

    def save_repo(self, repo: dict) -> None:
        write_atomic(self.repo_dir(repo["type"], repo["id"]) / "repo.json", json.dumps(repo, indent=1).encode())

    def list_repos(self, repo_type: str) -> list[dict]:
        base = self.root / "repos" / repo_type
        repos = [json.loads(p.read_text()) for p in sorted(base.glob("*/*/repo.json"))]
        return sorted(repos, key=lambda r: r["createdAt"])

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> bool:
        """Create the repo with its initial commit (a .gitattributes, as on the Hub); False if it exists."""
        with self.lock:
            if (self.repo_dir(repo_type, repo_id) / "repo.json").exists():
                return False
            created = now_iso()
            repo = {"id": repo_id, "type": repo_type, "private": private, "createdAt": created}
            repo.update(branches={}, tags={}, prs={})
            files = {".gitattributes": {"oid": self.put_blob(GITATTRIBUTES), "size": len(GITATTRIBUTES), "lfs": None}}
            sha = self.write_commit(repo, [], "initial commit", "", files)
            repo["branches"]["main"] = sha
            self.save_repo(repo)
            return True

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            directory = self.repo_dir(repo_type, repo_id)
            if not (directory / "repo.json").exists():
                raise repo_not_found(repo_id)
            for path in sorted(directory.rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
            directory.rmdir()

    # -- commits --
    def write_commit(self, repo: dict, parents: list[str], title: str, message: str, files: dict) -> str:
        commit = {"parents": parents, "title": title, "message": message, "date": now_iso(), "files": files}
        commit["authors"] = [{"user": DEFAULT_USER, "avatar": None}]
        sha = hashlib.sha1(json.dumps(commit, sort_keys=True).encode() + secrets.token_bytes(8)).hexdigest()
        commit["id"] = sha
        write_atomic(self.repo_dir(repo["type"], repo["id"]) / "commits" / f"{sha}.json", json.dumps(commit).encode())
        return sha

    def load_commit(self, repo: dict, sha: str) -> dict:
        return json.loads((self.repo_dir(repo["type"], repo["id"]) / "commits" / f"{sha}.json").read_text())

    def has_commit(self, repo: dict, sha: str) -> bool:
        return (self.repo_dir(repo["type"], repo["id"]) / "commits" / f"{sha}.json").exists()

    def history(self, repo: dict, sha: str) -> list[dict]:
        commits = []
        while sha:
            commit = self.load_commit(repo, sha)
            commits.append(commit)
            sha = commit["parents"][0] if commit["parents"] else None
        return commits

    def resolve(self, repo: dict, revision: str) -> str:
        """Branch, tag, `refs/heads|tags/...`, `refs/pr/N` or full commit sha -> commit sha."""
        name = revision
        for prefix, table in (("refs/heads/", "branches"), ("refs/tags/", "tags")):
            if name.startswith(prefix) and name[len(prefix) :] in repo[table]:
                return repo[table][name[len(prefix) :]]
        if name in repo["branches"]:
            return repo["branches"][name]
        if name in repo["tags"]:
            return repo["tags"][name]
        match = re.fullmatch(r"refs/pr/(\d+)", name)
        if match and match.group(1) in repo["prs"]:
            return repo["prs"][match.group(1)]
        if SHA_RE.match(name) and self.has_commit(repo, name):
            return name
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def lfs_patterns_of(storage: Storage, files: dict) -> list[str]:
    entry = files.get(".gitattributes")
    if entry is None or entry["lfs"] is not None:
        return []
    lines = storage.blob_path(entry["oid"]).read_text(errors="replace").splitlines()
    return [line.split()[0] for line in lines if "filter=lfs" in line.split()[1:]]


def matches_any(path: str, patterns: list[str]) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(path if "/" in p else name, p.lstrip("/")) for p in patterns)


def check_path(path: str) -> str:
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def directories_of(files: dict) -> dict[str, str]:
    """Every folder of the file table -> a stable oid derived from its content."""
    dirs: dict[str, list[str]] = {}
    for path, entry in files.items():
        parts = path.split("/")
        for i in range(1, len(parts)):
            dirs.setdefault("/".join(parts[:i]), []).append(f"{path}:{entry['oid']}")
    return {d: hashlib.sha1("\n".join(sorted(items)).encode()).hexdigest() for d, items in dirs.items()}


def tree_entry(path: str, entry: dict) -> dict:
    item = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
    if entry["lfs"] is not None:
        item["lfs"] = dict(entry["lfs"])
    return item


class HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, storage: Storage, user: str, quiet: bool = True):
        super().__init__(address, HubHandler)
        self.storage, self.user, self.quiet = storage, user, quiet
        self.state_lock = threading.Lock()
        self.request_log: list[dict] = []
        self.fail_rules: list[dict] = []
        self.multipart_chunk_size: int | None = None
        self.uploads: dict[str, dict] = {}  # LFS oid -> {"size", "sig", "chunk_size"} for uploads in progress


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubHTTPServer
    server_version = "HubTestServer/1.0"

    def log_message(self, format, *args):  # noqa: A002 (signature of the base class)
        if not self.server.quiet:
            super().log_message(format, *args)

    def do_GET(self):
        self.handle_method("GET")

    def do_HEAD(self):
        self.handle_method("HEAD")

    def do_POST(self):
        self.handle_method("POST")

    def do_PUT(self):
        self.handle_method("PUT")

    def do_DELETE(self):
        self.handle_method("DELETE")

    # -- plumbing --
    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def handle_method(self, method: str) -> None:
        self.method = method
        self.body = self.read_body()
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        host, port = self.server.server_address[:2]
        self.base = f"http://{self.headers.get('Host') or f'{host}:{port}'}"
        self.status_sent = None
        log_entry = None
        if not url.path.startswith("/_admin/"):
            headers = {key.lower(): value for key, value in self.headers.items()}
            log_entry = {"method": method, "path": self.path, "headers": headers, "status": None}
            with self.server.state_lock:
                self.server.request_log.append(log_entry)
                rule = next((r for r in self.server.fail_rules if self.rule_matches(r)), None)
                if rule is not None:
                    rule["count"] -= 1
                    if rule["count"] <= 0:
                        self.server.fail_rules.remove(rule)
            if rule is not None:
                log_entry["injected"] = rule["mode"]
                if rule["mode"] == "drop":
                    self.close_connection = True  # no answer at all: the client sees the connection close
                    return
                self.send_json(rule["status"], {"error": "Injected failure (test server)"})
                log_entry["status"] = rule["status"]
                return
        try:
            self.route(method, url.path)
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self.send_json(err.status, err.body, headers)
        except Exception as err:  # a bug in this server: answer 500 with the reason instead of hanging the client
            traceback.print_exc()
            self.send_json(500, {"error": f"Internal test server error: {err!r}"})
        finally:
            if log_entry is not None:
                log_entry["status"] = self.status_sent

    def rule_matches(self, rule: dict) -> bool:
        if rule.get("method") and rule["method"].upper() != self.method:
            return False
        return re.search(rule["path_regex"], self.path) is not None

    def send(self, status: int, data: bytes = b"", headers: dict | None = None, length: int | None = None) -> None:
        self.status_sent = status
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/octet-stream")
        headers["Content-Length"] = str(len(data) if length is None else length)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.method != "HEAD" and data:
            self.wfile.write(data)

    def send_json(self, status: int, obj, headers: dict | None = None) -> None:
        self.send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def json_body(self):
        try:
            return json.loads(self.body or b"{}")
        except ValueError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err

    def token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        return auth[7:].strip() or None

    def require_token(self) -> None:
        if self.token() is None:
            raise HubError(401, "Invalid credentials in Authorization header")

    def readable_repo(self, repo_type: str, repo_id: str) -> dict:
        repo = self.server.storage.load_repo(repo_type, repo_id)
        if repo["private"] and self.token() is None:
            raise HubError(401, "Invalid username or password.", "RepoNotFound")
        return repo

    def writable_repo(self, repo_type: str, repo_id: str) -> dict:
        self.require_token()
        return self.server.storage.load_repo(repo_type, repo_id)

    def repo_url(self, repo: dict) -> str:
        return f"{self.base}/{URL_PREFIXES[repo['type']]}{repo['id']}"

    # -- routing --
    def route(self, method: str, path: str) -> None:
        seg = r"([^/]+)"
        repo = r"(models|datasets|spaces)/([^/]+)/([^/]+)"
        routes = [
            ("POST", r"/_admin/fail-next", self.admin_fail_next),
            ("GET", r"/_admin/requests", self.admin_requests),
            ("POST", r"/_admin/reset", self.admin_reset),
            ("POST", r"/_admin/config", self.admin_config),
            ("GET", r"/api/whoami-v2", self.whoami),
            ("GET", r"/api/agent-harnesses", lambda: self.send_json(200, {"standardEnvVars": [], "harnesses": {}})),
            ("*", r"/api/telemetry/.*", lambda: self.send_json(200, {})),
            ("POST", r"/api/repos/create", self.create_repo),
            ("DELETE", r"/api/repos/delete", self.delete_repo),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("GET", r"/api/(models|datasets|spaces)", self.list_repos),
            ("GET", rf"/api/{repo}(?:/revision/{seg})?", self.repo_info),
            ("GET", rf"/api/{repo}/tree/{seg}(?:/(.+))?", self.tree),
            ("POST", rf"/api/{repo}/paths-info/{seg}", self.paths_info),
            ("POST", rf"/api/{repo}/preupload/{seg}", self.preupload),
            ("POST", rf"/api/{repo}/commit/{seg}", self.commit),
            ("GET", rf"/api/{repo}/commits/{seg}", self.list_commits),
            ("GET", rf"/api/{repo}/refs", self.refs),
            ("POST", rf"/api/{repo}/branch/{seg}", self.create_branch),
            ("DELETE", rf"/api/{repo}/branch/{seg}", self.delete_branch),
            ("POST", rf"/api/{repo}/tag/{seg}", self.create_tag),
            ("PUT", rf"/api/{repo}/settings", self.settings),
            ("POST", r"/(datasets/|spaces/)?([^/]+)/([^/]+)\.git/info/lfs/objects/batch", self.lfs_batch),
            ("PUT", rf"/_lfs/upload/{seg}", self.lfs_put),
            ("PUT", rf"/_lfs/part/{seg}/(\d+)", self.lfs_put_part),
            ("POST", rf"/_lfs/complete/{seg}", self.lfs_complete),
            ("POST", rf"/_lfs/verify/{seg}", self.lfs_verify),
            ("GET", r"/(datasets/|spaces/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)", self.resolve),
        ]
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and (route_method in (method, "*") or (route_method == "GET" and method == "HEAD")):
                return handler(*[unquote(g) if g is not None else None for g in match.groups()])
        if any(re.fullmatch(pattern, path) for _, pattern, _ in routes):
            raise HubError(405, f"Method {method} not allowed on {path}")
        raise HubError(404, f"No such endpoint on the test server: {method} {path}")

    @staticmethod
    def repo_key(type_segment: str | None, namespace: str, name: str) -> tuple[str, str]:
        repo_type = REPO_TYPES.get((type_segment or "models").strip("/"), "model")
        return repo_type, f"{namespace}/{name}"

    # -- admin --
    def admin_fail_next(self):
        rule = self.json_body()
        re.compile(rule["path_regex"])
        rule = {"status": 500, "count": 1, "mode": "status", "method": None, **rule}
        if rule["mode"] not in ("status", "drop"):
            raise HubError(400, "mode must be 'status' or 'drop'")
        with self.server.state_lock:
            self.server.fail_rules.append(rule)
        self.send_json(200, rule)

    def admin_requests(self):
        with self.server.state_lock:
            self.send_json(200, list(self.server.request_log))

    def admin_reset(self):
        with self.server.state_lock:
            self.server.request_log.clear()
            self.server.fail_rules.clear()
            self.server.multipart_chunk_size = None
        self.send_json(200, {})

    def admin_config(self):
        config = self.json_body()
        if "multipart_chunk_size" in config:
            self.server.multipart_chunk_size = config["multipart_chunk_size"]
        self.send_json(200, {"multipart_chunk_size": self.server.multipart_chunk_size})

    # -- account / repos --
    def whoami(self):
        self.require_token()
        user = self.server.user
        auth = {"type": "access_token", "accessToken": {"displayName": "test token", "role": "write"}}
        self.send_json(200, {"type": "user", "id": user, "name": user, "fullname": user, "orgs": [], "auth": auth})

    def create_repo(self):
        self.require_token()
        payload = self.json_body()
        name, namespace = payload.get("name") or "", payload.get("organization") or self.server.user
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES or not NAME_RE.match(name) or not NAME_RE.match(namespace):
            raise HubError(400, f"Invalid repo name or type: {namespace}/{name} ({repo_type})")
        private = payload.get("visibility", "private" if payload.get("private") else "public") == "private"
        repo_id = f"{namespace}/{name}"
        url = f"{self.base}/{URL_PREFIXES[repo_type]}{repo_id}"
        if not self.server.storage.create_repo(repo_type, repo_id, private):
            raise HubError(409, f"You already created this {repo_type} repo", url=url)
        self.send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    def delete_repo(self):
        self.require_token()
        payload = self.json_body()
        namespace = payload.get("organization") or self.server.user
        self.server.storage.delete_repo(payload.get("type") or "model", f"{namespace}/{payload.get('name')}")
        self.send_json(200, {})

    def settings(self, type_segment, namespace, name):
        repo_type, repo_id = self.repo_key(type_segment, namespace, name)
        with self.server.storage.lock:
            repo = self.writable_repo(repo_type, repo_id)
            payload = self.json_body()
            if "visibility" in payload:
                repo["private"] = payload["visibility"] == "private"
            elif payload.get("private") is not None:
                repo["private"] = bool(payload["private"])
            self.server.storage.save_repo(repo)
        self.send_json(200, {"private": repo["private"]})

    def validate_yaml(self):
        content = self.json_body().get("content", "")
        lines = content.splitlines()
        if lines and lines[0].strip() == "---" and "---" not in (line.strip() for line in lines[1:]):
            message = "Metadata block opened with '---' is never closed"
            return self.send_json(400, {"error": message, "errors": [{"message": message}]})
        self.send_json(200, {"errors": [], "warnings": []})

    def info_dict(self, repo: dict, sha: str, blobs: bool = False) -> dict:
        commit = self.server.storage.load_commit(repo, sha)
        siblings = []
        for path, entry in sorted(commit["files"].items()):
            sibling = {"rfilename": path}
            if blobs:
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if entry["lfs"] is not None:
                    lfs = entry["lfs"]
                    sibling["lfs"] = {"size": lfs["size"], "sha256": lfs["oid"], "pointerSize": lfs["pointerSize"]}
            siblings.append(sibling)
        info = {"_id": hashlib.sha1(repo["id"].encode()).hexdigest()[:24], "id": repo["id"]}
        if repo["type"] == "model":
            info["modelId"] = repo["id"]
        info.update(author=repo["id"].split("/")[0], sha=sha, lastModified=commit["date"], createdAt=repo["createdAt"])
        info.update(private=repo["private"], disabled=False, gated=False, downloads=0, likes=0, tags=[])
        info.update(siblings=siblings, usedStorage=sum(e["size"] for e in commit["files"].values()))
        return info

    def list_repos(self, type_segment):
        repos = self.server.storage.list_repos(REPO_TYPES[type_segment])
        author = self.query.get("author", [None])[0]
        search = self.query.get("search", [None])[0]
        limit = self.query.get("limit", [None])[0]
        items = [
            self.info_dict(repo, repo["branches"]["main"])
            for repo in repos
            if (self.token() is not None or not repo["private"])
            and (author is None or repo["id"].split("/")[0] == author)
            and (search is None or search.lower() in repo["id"].lower())
            and "main" in repo["branches"]
        ]
        self.send_json(200, items[: int(limit)] if limit else items)

    def repo_info(self, type_segment, namespace, name, revision):
        repo = self.readable_repo(*self.repo_key(type_segment, namespace, name))
        sha = self.server.storage.resolve(repo, revision or "main")
        blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        self.send_json(200, self.info_dict(repo, sha, blobs=blobs))

    def refs(self, type_segment, namespace, name):
        repo = self.readable_repo(*self.repo_key(type_segment, namespace, name))
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in repo["branches"].items()]
        tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in repo["tags"].items()]
        prs = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": s} for n, s in repo["prs"].items()]
        self.send_json(200, {"branches": branches, "tags": tags, "converts": [], "pullRequests": prs})

    def list_commits(self, type_segment, namespace, name, revision):
        repo = self.readable_repo(*self.repo_key(type_segment, namespace, name))
        history = self.server.storage.history(repo, self.server.storage.resolve(repo, revision))
        fields = ("id", "title", "message", "authors", "date")
        self.send_json(200, [{k: commit[k] for k in fields} for commit in history])

    def create_branch(self, type_segment, namespace, name, branch):
        storage = self.server.storage
        with storage.lock:
            repo = self.writable_repo(*self.repo_key(type_segment, namespace, name))
            if branch in repo["branches"]:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            if not NAME_RE.match(branch.replace("/", "-")) or branch.startswith("refs/"):
                raise HubError(400, f"Invalid branch name: {branch}")
            repo["branches"][branch] = storage.resolve(repo, self.json_body().get("startingPoint") or "main")
            storage.save_repo(repo)
        self.send_json(200, {})

    def delete_branch(self, type_segment, namespace, name, branch):
        with self.server.storage.lock:
            repo = self.writable_repo(*self.repo_key(type_segment, namespace, name))
            if repo["branches"].pop(branch, None) is None:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            self.server.storage.save_repo(repo)
        self.send_json(200, {})

    def create_tag(self, type_segment, namespace, name, revision):
        storage = self.server.storage
        with storage.lock:
            repo = self.writable_repo(*self.repo_key(type_segment, namespace, name))
            tag = self.json_body().get("tag") or ""
            if tag in repo["tags"]:
                raise HubError(409, f"Reference already exists: refs/tags/{tag}")
            repo["tags"][tag] = storage.resolve(repo, revision)
            storage.save_repo(repo)
        self.send_json(200, {})

    # -- listing files --
    def tree(self, type_segment, namespace, name, revision, path):
        repo = self.readable_repo(*self.repo_key(type_segment, namespace, name))
        sha = self.server.storage.resolve(repo, revision)
        files = self.server.storage.load_commit(repo, sha)["files"]
        dirs = directories_of(files)
        prefix = (path or "").strip("/")
        if prefix and prefix not in dirs:
            raise HubError(404, f"{prefix} does not exist on {revision}", "EntryNotFound", {"X-Repo-Commit": sha})
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")

        def wanted(item_path: str) -> bool:
            if prefix and not item_path.startswith(prefix + "/"):
                return False
            rest = item_path[len(prefix) + 1 :] if prefix else item_path
            return recursive or "/" not in rest

        items = [{"type": "directory", "oid": oid, "size": 0, "path": d} for d, oid in dirs.items() if wanted(d)]
        items += [tree_entry(p, e) for p, e in files.items() if wanted(p)]
        self.send_json(200, sorted(items, key=lambda item: item["path"]))

    def paths_info(self, type_segment, namespace, name, revision):
        repo = self.readable_repo(*self.repo_key(type_segment, namespace, name))
        sha = self.server.storage.resolve(repo, revision)
        files = self.server.storage.load_commit(repo, sha)["files"]
        dirs = directories_of(files)
        if "json" in self.headers.get("Content-Type", ""):
            paths = self.json_body().get("paths", [])
        else:
            paths = parse_qs(self.body.decode()).get("paths", [])
        items = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                items.append(tree_entry(path, files[path]))
            elif path in dirs:
                items.append({"type": "directory", "oid": dirs[path], "size": 0, "path": path})
        self.send_json(200, items)

    # -- uploads --
    def preupload(self, type_segment, namespace, name, revision):
        storage = self.server.storage
        repo = self.writable_repo(*self.repo_key(type_segment, namespace, name))
        files = storage.load_commit(repo, storage.resolve(repo, revision))["files"]
        patterns = lfs_patterns_of(storage, files)
        payload = self.json_body()
        gitignore = payload.get("gitIgnore")
        if gitignore is None and ".gitignore" in files and files[".gitignore"]["lfs"] is None:
            gitignore = storage.blob_path(files[".gitignore"]["oid"]).read_text(errors="replace")
        ignore_patterns = [p.strip() for p in (gitignore or "").splitlines() if p.strip() and p[0] != "#"]
        answers = []
        for item in payload.get("files", []):
            path = check_path(item["path"])
            sample = base64.b64decode(item.get("sample") or "")
            is_lfs = item["size"] >= LFS_SIZE_THRESHOLD or matches_any(path, patterns) or b"\0" in sample
            answer = {"path": path, "uploadMode": "lfs" if is_lfs else "regular"}
            answer["shouldIgnore"] = matches_any(path, ignore_patterns)
            existing = files.get(path)
            if existing is not None:
                answer["oid"] = existing["lfs"]["oid"] if existing["lfs"] else existing["oid"]
            answers.append(answer)
        self.send_json(200, {"files": answers, "commitOid": storage.resolve(repo, revision)})

    def lfs_batch(self, type_prefix, namespace, name):
        repo_type, repo_id = self.repo_key(type_prefix, namespace, name)
        self.writable_repo(repo_type, repo_id)
        payload = self.json_body()
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the 'upload' operation is supported by the test server")
        objects, transfer = [], "basic"
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            item = {"oid": oid, "size": size, "authenticated": True}
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                item["error"] = {"code": 422, "message": f"Invalid oid: {oid}"}
            elif self.server.storage.lfs_size(oid) != size:  # not stored yet: tell the client where to send it
                sig, chunk = secrets.token_hex(16), self.server.multipart_chunk_size
                verify = {"href": f"{self.base}/_lfs/verify/{oid}", "header": {}}
                if chunk and size > chunk and "multipart" in payload.get("transfers", []):
                    transfer = "multipart"
                    header = {"chunk_size": str(chunk)}
                    for part in range(1, -(-size // chunk) + 1):
                        header[str(part)] = f"{self.base}/_lfs/part/{oid}/{part}?sig={sig}"
                    upload = {"href": f"{self.base}/_lfs/complete/{oid}?sig={sig}", "header": header}
                else:
                    upload = {"href": f"{self.base}/_lfs/upload/{oid}?sig={sig}"}
                item["actions"] = {"upload": upload, "verify": verify}
                with self.server.state_lock:
                    self.server.uploads[oid] = {"size": size, "sig": sig}
            objects.append(item)
        body = {"transfer": transfer, "objects": objects, "hash_algo": "sha256"}
        self.send(200, json.dumps(body).encode(), {"Content-Type": "application/vnd.git-lfs+json"})

    def pending_upload(self, oid: str) -> dict:
        with self.server.state_lock:
            upload = self.server.uploads.get(oid)
        if upload is None or self.query.get("sig", [None])[0] != upload["sig"]:
            raise HubError(403, "Invalid or expired upload URL")
        return upload

    def lfs_put(self, oid):
        upload = self.pending_upload(oid)
        self.server.storage.put_lfs(oid, upload["size"], self.body)
        self.send(200)

    def lfs_put_part(self, oid, part):
        self.pending_upload(oid)
        write_atomic(self.server.storage.root / "uploads" / f"{oid}.{int(part)}", self.body)
        self.send(200, headers={"ETag": f'"{hashlib.md5(self.body).hexdigest()}"'})

    def lfs_complete(self, oid):
        upload = self.pending_upload(oid)
        parts = sorted(self.json_body().get("parts", []), key=lambda p: p["partNumber"])
        data = []
        for part in parts:
            path = self.server.storage.root / "uploads" / f"{oid}.{int(part['partNumber'])}"
            if not path.exists() or f'"{hashlib.md5(path.read_bytes()).hexdigest()}"' != part["etag"]:
                raise HubError(400, f"Part {part['partNumber']} of {oid} is missing or its etag does not match")
            data.append(path.read_bytes())
        self.server.storage.put_lfs(oid, upload["size"], b"".join(data))
        for part in parts:
            (self.server.storage.root / "uploads" / f"{oid}.{int(part['partNumber'])}").unlink()
        self.send_json(200, {"success": True})

    def lfs_verify(self, oid):
        self.require_token()
        payload = self.json_body()
        if payload.get("oid") != oid or self.server.storage.lfs_size(oid) != payload.get("size"):
            raise HubError(404, f"LFS object {oid} of size {payload.get('size')} was not uploaded")
        with self.server.state_lock:
            self.server.uploads.pop(oid, None)
        self.send_json(200, {"success": True})

    def commit(self, type_segment, namespace, name, revision):
        storage = self.server.storage
        try:
            lines = [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]
        except ValueError as err:
            raise HubError(400, f"Invalid NDJSON commit payload: {err}") from err
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0]["value"]
        with storage.lock:
            repo = self.writable_repo(*self.repo_key(type_segment, namespace, name))
            head = storage.resolve(repo, revision)
            create_pr = self.query.get("create_pr", ["0"])[0] in ("1", "true")
            if not create_pr and revision not in repo["branches"]:
                raise HubError(400, f"Can only commit to a branch, not to {revision!r}")
            if header.get("parentCommit") and header["parentCommit"] != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(storage.load_commit(repo, head)["files"])
            for line in lines[1:]:
                self.apply_operation(files, line.get("key"), line.get("value") or {}, head)
            sha = storage.write_commit(
                repo, [head], header.get("summary") or "", header.get("description") or "", files
            )
            pr_url = None
            if create_pr:
                number = str(max([int(n) for n in repo["prs"]] + [0]) + 1)
                repo["prs"][number] = sha
                pr_url = f"{self.repo_url(repo)}/discussions/{number}"
            else:
                repo["branches"][revision] = sha
            storage.save_repo(repo)
        body = {"success": True, "commitOid": sha, "commitUrl": f"{self.repo_url(repo)}/commit/{sha}"}
        self.send_json(200, {**body, "pullRequestUrl": pr_url, "hookOutput": ""})

    def apply_operation(self, files: dict, key: str, value: dict, head: str) -> None:
        storage = self.server.storage
        path = check_path(str(value.get("path", "")).strip("/") if key == "deletedFolder" else value.get("path", ""))
        if key == "file":
            try:
                data = base64.b64decode(value.get("content", ""), validate=True)
            except binascii.Error as err:
                raise HubError(400, f"Invalid base64 content for {path}") from err
            files[path] = {"oid": storage.put_blob(data), "size": len(data), "lfs": None}
        elif key == "lfsFile":
            oid = value.get("oid", "")
            size = storage.lfs_size(oid) if re.fullmatch(r"[0-9a-f]{64}", oid) else None
            if size is None or value.get("size", size) != size:
                raise HubError(422, f"LFS object {oid} for {path} was never uploaded (or has another size)")
            pointer = lfs_pointer(oid, size)
            lfs = {"oid": oid, "size": size, "pointerSize": len(pointer)}
            files[path] = {"oid": git_blob_sha1(pointer), "size": size, "lfs": lfs}
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            doomed = [p for p in files if p.startswith(path + "/")]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in doomed:
                del files[p]
        else:
            raise HubError(400, f"Unsupported commit operation: {key!r}")

    # -- downloads --
    def resolve(self, type_prefix, namespace, name, revision, path):
        storage = self.server.storage
        repo = self.readable_repo(*self.repo_key(type_prefix, namespace, name))
        sha = storage.resolve(repo, revision)
        entry = storage.load_commit(repo, sha)["files"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
        headers = {"X-Repo-Commit": sha, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes"}
        filename = path.rsplit("/", 1)[-1]
        headers["Content-Disposition"] = f"inline; filename*=UTF-8''{quote(filename)}; filename=\"{filename}\""
        if entry["lfs"] is not None:
            headers.update({"X-Linked-Etag": f'"{entry["lfs"]["oid"]}"', "X-Linked-Size": str(entry["size"])})
            file_path = storage.lfs_path(entry["lfs"]["oid"])
        else:
            file_path = storage.blob_path(entry["oid"])
        size = entry["size"]
        start, end, status = 0, size - 1, 200
        range_header = self.headers.get("Range")
        if range_header:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if not match or match.groups() == ("", ""):
                raise HubError(416, f"Unsupported range: {range_header}", headers={"Content-Range": f"bytes */{size}"})
            first, last = match.groups()
            if first:
                start, end = int(first), min(int(last), size - 1) if last else size - 1
            else:
                start, end = max(size - int(last), 0), size - 1
            if start >= size or start > end:
                raise HubError(
                    416, f"Range not satisfiable: {range_header}", headers={"Content-Range": f"bytes */{size}"}
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        if self.method == "HEAD":
            return self.send(status, headers=headers, length=end - start + 1)
        with open(file_path, "rb") as f:
            f.seek(start)
            self.send(status, f.read(end - start + 1), headers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--root", required=True, type=Path, help="where repos and objects are stored")
    parser.add_argument("--port-file", type=Path, help="written with the port once the server listens")
    parser.add_argument("--user", default=DEFAULT_USER, help="namespace of repos created without one")
    parser.add_argument("--verbose", action="store_true", help="log every request line to stderr")
    args = parser.parse_args(argv)

    server = HubHTTPServer((args.host, args.port), Storage(args.root), args.user, quiet=not args.verbose)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SystemExit ends serve_forever, then the socket closes
    port = server.server_address[1]
    if args.port_file:
        write_atomic(args.port_file, str(port).encode())
    print(f"Hub test server on http://{args.host}:{port} (root {args.root})", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
