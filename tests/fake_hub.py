"""A stand-in for the Hugging Face Hub on 127.0.0.1, for the Hub tests and the import benchmark.

Serves repositories from folders, as the Hub serves them to huggingface_hub: the model-info
API (``/api/models/{repo}`` and ``…/revision/{rev}``, with sizes, git blob ids and LFS SHA-256
when asked for ``blobs``), the tree API, and resolve URLs (``/{repo}/resolve/{rev}/{file}``,
HEAD and GET) with ``X-Repo-Commit`` and ETags; LFS files (``*.safetensors``) are redirected, as
the Hub redirects them to its CDN, to a second server on another port (another origin, so that
huggingface_hub stops at the redirect and drops the token) that serves byte ranges (206,
``Content-Range``). Errors carry the Hub's ``X-Error-Code`` (RepoNotFound, RevisionNotFound,
GatedRepo, EntryNotFound). Every request is logged with the body bytes served; faults can be
injected per file: drop the connection midway through a range, tamper with the bytes, or
ignore ranges (send the whole file, as some proxies do).

Bounded and self-stopping: two daemon threads, stopped by ``close()`` or after ``lifetime``
seconds whatever happens, and a socket timeout on every connection.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin")
RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass
class Repo:
    """A repository served from ``folder``: its files, their hashes, its one commit."""

    repo_id: str
    folder: Path
    gated: int | None = None  # the status a gated repo's files answer (401 or 403)
    files: dict[str, dict] = field(init=False)
    commit: str = field(init=False)

    def __post_init__(self):
        self.files = {}
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
            name = path.relative_to(self.folder).as_posix()
            size = path.stat().st_size
            self.files[name] = {"path": path, "size": size,
                                "lfs": name.endswith(LFS_SUFFIXES),
                                "sha256": _hash(path, hashlib.sha256()),
                                "oid": _hash(path, hashlib.sha1(b"blob %d\0" % size))}  # fmt: skip
        listing = json.dumps([self.repo_id, {n: f["sha256"] for n, f in self.files.items()}])
        self.commit = hashlib.sha1(listing.encode()).hexdigest()

    def sibling(self, name: str, blobs: bool) -> dict:
        file = self.files[name]
        entry = {"rfilename": name}
        if blobs:
            entry |= {"size": file["size"], "blobId": file["oid"]}
            if file["lfs"]:
                entry["lfs"] = {"size": file["size"], "sha256": file["sha256"], "pointerSize": 134}
        return entry

    def tree_entry(self, name: str) -> dict:
        file = self.files[name]
        entry = {"type": "file", "oid": file["oid"], "size": file["size"], "path": name}
        if file["lfs"]:
            entry["lfs"] = {"oid": file["sha256"], "size": file["size"], "pointerSize": 134}
        return entry


def _hash(path: Path, digest) -> str:
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class FakeHub:
    """The Hub and its CDN on two loopback ports (see the module docstring)."""

    def __init__(self, lifetime: float = 600.0):
        self.repos: dict[str, Repo] = {}
        self.log: list[dict] = []  # one entry per request: method, path, status, bytes, range
        self.drops: dict[str, int] = {}  # sha256 → connections still to drop midway
        self.tampered: dict[str, int] = {}  # sha256 → offset from which its bytes are flipped
        self.whole: set[str] = set()  # sha256 of files sent whole (200) whatever range is asked
        self.lock = threading.Lock()
        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, cdn))
                        for cdn in (False, True)]  # fmt: skip
        for server in self.servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self.timer = threading.Timer(lifetime, self.close)
        self.timer.daemon = True
        self.timer.start()
        self.endpoint = f"http://127.0.0.1:{self.servers[0].server_address[1]}"
        self.cdn = f"http://127.0.0.1:{self.servers[1].server_address[1]}"

    def add(self, repo_id: str, folder: Path, gated: int | None = None) -> Repo:
        self.repos[repo_id] = Repo(repo_id, Path(folder), gated)
        return self.repos[repo_id]

    def served(self, kind: str | None = None) -> int:
        """Body bytes served: all, or of "api", "resolve" or "cdn" requests."""
        return sum(e["bytes"] for e in self.log if kind is None or e["kind"] == kind)

    def close(self) -> None:
        self.timer.cancel()
        for server in self.servers:
            server.shutdown()
            server.server_close()


def _handler(hub: FakeHub, cdn: bool):
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # seconds a connection may stay silent

        def log_message(self, *args):  # quiet
            pass

        def do_HEAD(self):
            self._answer(head=True)

        def do_GET(self):
            self._answer(head=False)

        def _answer(self, head: bool):
            url = urlsplit(self.path)
            path, query = unquote(url.path), parse_qs(url.query)
            try:
                if cdn:
                    self._cdn(path, head)
                elif path.startswith("/api/models/"):
                    self._api(path.removeprefix("/api/models/"), query)
                else:
                    self._resolve(path, head)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _send(self, status, body=b"", headers=None, kind="api", sent=None, head=False):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            self._log(status, kind, 0 if head else len(body))

        def _log(self, status, kind, count, extra=None):
            with hub.lock:
                hub.log.append({"method": self.command, "path": self.path, "status": status,
                                "kind": kind, "bytes": count,
                                "range": self.headers.get("Range"), **(extra or {})})  # fmt: skip

        def _error(self, status, code, message, head=False, commit=None):
            headers = {"X-Error-Code": code, "X-Error-Message": message}
            headers |= {"X-Repo-Commit": commit} if commit else {}
            body = json.dumps({"error": message}).encode()
            self._send(status, body, headers | {"Content-Type": "application/json"}, head=head)

        def _repo(self, repo_id, revision, head=False):
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found", head)
            elif revision not in ("main", repo.commit):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            else:
                return repo
            return None

        def _api(self, rest, query):
            match = re.fullmatch(r"([^/]+/[^/]+)(?:/(revision|tree)/(.+?))?/?", rest)
            if not match:
                return self._error(404, "EntryNotFound", "no such API")
            repo_id, what, revision = match[1], match[2], match[3] or "main"
            repo = self._repo(repo_id, revision)
            if repo is None:
                return None
            if what == "tree":
                body = [repo.tree_entry(n) for n in repo.files]
            else:
                blobs = query.get("blobs", ["false"])[0].lower() == "true"
                body = {"_id": repo.commit[:24], "id": repo_id, "modelId": repo_id,
                        "sha": repo.commit, "private": False,
                        "gated": "auto" if repo.gated else False, "disabled": False,
                        "siblings": [repo.sibling(n, blobs) for n in repo.files]}  # fmt: skip
            return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

        def _resolve(self, path, head):
            match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if not match:
                return self._error(404, "EntryNotFound", "no such page", head)
            repo = self._repo(match[1], match[2], head)
            if repo is None:
                return None
            name, commit = match[3], repo.commit
            if repo.gated:
                message = f"Access to model {repo.repo_id} is restricted; log in."
                return self._error(repo.gated, "GatedRepo", message, head, commit)
            file = repo.files.get(name)
            if file is None:
                return self._error(404, "EntryNotFound", f"{name} does not exist", head, commit)
            headers = {"X-Repo-Commit": commit}
            if file["lfs"]:
                headers |= {"Location": f"{hub.cdn}/{file['sha256']}",
                            "X-Linked-Etag": f'"{file["sha256"]}"',
                            "X-Linked-Size": file["size"], "ETag": f'"{file["oid"]}"'}  # fmt: skip
                return self._send(302, b"", headers, head=head, kind="resolve")
            body = file["path"].read_bytes()
            headers |= {"ETag": f'"{file["oid"]}"', "Accept-Ranges": "bytes"}
            return self._send(200, body, headers, kind="resolve", head=head)

        def _cdn(self, path, head):
            sha = path.strip("/")
            file = next((f for r in hub.repos.values() for f in r.files.values()
                         if f["sha256"] == sha), None)  # fmt: skip
            if file is None:
                return self._send(404, b"NoSuchKey", kind="cdn", head=head)
            size, etag = file["size"], f'"{sha}"'
            wanted = None if sha in hub.whole else RANGE.fullmatch(self.headers.get("Range", ""))
            if wanted is None:
                start, end, status = 0, size, 200
            else:
                start = int(wanted[1])
                end = min(size, int(wanted[2]) + 1) if wanted[2] else size
                status = 206
                if start >= size or start >= end:
                    return self._send(416, b"", {"Content-Range": f"bytes */{size}"}, kind="cdn")
            headers = {"ETag": etag, "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream"}  # fmt: skip
            if status == 206:
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(end - start))
            self.end_headers()
            if head:
                return self._log(status, "cdn", 0)
            with hub.lock:
                drop = hub.drops.get(sha, 0) > 0 and status == 206 and end - start > 1
                if drop:
                    hub.drops[sha] -= 1
            stop = start + (end - start) // 2 if drop else end
            with file["path"].open("rb") as f:
                f.seek(start)
                data = f.read(stop - start)
            if sha in hub.tampered:
                cut = max(0, min(len(data), hub.tampered[sha] - start))
                data = data[:cut] + bytes(b ^ 0xFF for b in data[cut:])
            self.wfile.write(data)
            self.wfile.flush()
            self._log(status, "cdn", len(data), {"dropped": drop})
            if drop:
                self.close_connection = True
                self.connection.shutdown(2)
            return None

    return Handler
