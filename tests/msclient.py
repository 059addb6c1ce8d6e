"""The stock `modelscope` client (1.40.2, over modelscope_hub 0.5.1) against any endpoint that
claims to speak ModelScope: the fake of tests/fakems.py, or the mirror's own ModelScope API at
`http://127.0.0.1:PORT/hubs/modelscope`.

The client reads its settings at import time, so every call runs in a subprocess of this venv's
python, with a clean environment: `MODELSCOPE_ENDPOINT`, `MODELSCOPE_CACHE`, `MODELSCOPE_HOME`
and `HOME` inside the test's folder (the client writes a session id under its home), the token
only when given, no proxy variables, and CLIENT_SETTINGS; each subprocess runs under a timeout.
One subprocess runs a list of operations (`run`), which keeps `battery` to one interpreter start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: Settings that keep the client's error paths short. Its hash-mismatch retries (3 attempts,
#: 1 s then 2 s apart) are constants of modelscope_hub._download, not settings: a test that
#: serves corrupt bytes takes about 3 s per file. (No MODELSCOPE_LOG_LEVEL: modelscope parses
#: it with int() and modelscope_hub as a level name, so no value suits both.)
CLIENT_SETTINGS = {
    "MODELSCOPE_API_MAX_RETRIES": "2",
    "MODELSCOPE_API_CONNECT_TIMEOUT": "5",
    "MODELSCOPE_API_TIMEOUT": "30",
    "MODELSCOPE_DOWNLOAD_TIMEOUT": "30",
    "MODELSCOPE_DOWNLOAD_MAX_RETRIES": "3",
    "MODELSCOPE_DOWNLOAD_RETRY_MAX_DELAY_SECONDS": "1",
    "MODELSCOPE_REPO_TREE_PAGE_RETRY_MAX_DELAY_SECONDS": "1",
    "MODELSCOPE_DOWNLOAD_FILE_LOCK_TIMEOUT_SECONDS": "30",
    "TQDM_DISABLE": "1",
}
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}
_MARK = "MSCLIENT-OUTCOME "

#: Runs in the subprocess: argv[1] is a JSON list of operations, one outcome line per operation.
_DRIVER = r'''
import dataclasses, json, sys

def snapshot(repo_id, cache, revision=None, repo_type="model", allow_patterns=None):
    from modelscope.hub.snapshot_download import snapshot_download
    return snapshot_download(repo_id=repo_id, repo_type=repo_type, revision=revision,
                             cache_dir=cache, allow_patterns=allow_patterns)

def file(repo_id, path, cache, revision=None, repo_type="model"):
    from modelscope.hub.file_download import dataset_file_download, model_file_download
    if repo_type == "dataset":
        return dataset_file_download(repo_id, path, revision=revision, cache_dir=cache)
    return model_file_download(repo_id, path, revision=revision, cache_dir=cache)

def search(owner=None, text=None, repo_type="model"):
    from modelscope.hub.api import HubApi
    api, ids, page = HubApi(), [], 1
    while True:
        items = api.list_repos(repo_type, owner=owner, search=text, page_number=page,
                               page_size=50).items
        ids += [r.repo_id for r in items]
        if len(items) < 50 or (page + 1) * 50 > 3000:
            return ids
        page += 1

def info(repo_id, repo_type="model"):
    from modelscope.hub.api import HubApi
    if repo_type == "model":
        return HubApi().get_model(repo_id)
    return dataclasses.asdict(HubApi().get_repo(repo_id, repo_type))

def files(repo_id, revision=None):
    from modelscope.hub.api import HubApi
    return HubApi().get_model_files(repo_id, revision=revision)

def revisions(repo_id):
    from modelscope.hub.api import HubApi
    branches, tags = HubApi().get_model_branches_and_tags(repo_id)
    return {"branches": branches, "tags": tags}

def chain(e):
    names = []
    while e is not None and len(names) < 10:
        names.append(type(e).__name__)
        e = e.__cause__ or e.__context__
    return names

for op in json.loads(sys.argv[1]):
    name = op.pop("op")
    try:
        outcome = {"ok": True, "value": globals()[name](**op)}
    except Exception as e:
        outcome = {"ok": False, "error": type(e).__name__, "chain": chain(e),
                   "message": str(e)[:2000]}
    print("MSCLIENT-OUTCOME " + json.dumps(outcome, default=str), flush=True)
'''


@dataclass
class Outcome:
    """What one operation gave: its value, or the exception it raised (`chain` names it and
    its causes, outermost first: the compat layer wraps NotExistError in requests' HTTPError)."""

    ok: bool
    value: object = None
    error: str | None = None
    chain: tuple[str, ...] = ()
    message: str = ""


class ClientFailed(Exception):
    """The stock client raised where a helper expected a value."""

    def __init__(self, op: dict, outcome: Outcome, stderr: str):
        self.op, self.outcome, self.stderr = op, outcome, stderr
        self.error, self.chain = outcome.error, outcome.chain
        super().__init__(f"{op.get('op')} {op}: {' <- '.join(outcome.chain)}: "
                         f"{outcome.message}\n--- client stderr (tail) ---\n{stderr[-3000:]}")


def client_env(endpoint: str, cache: Path, token: str | None = None) -> dict[str, str]:
    """The subprocess's environment (see the module docstring)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MODELSCOPE_") and k.lower() not in _PROXY_VARIABLES}
    home = cache.parent / f"{cache.name}-home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(CLIENT_SETTINGS, MODELSCOPE_ENDPOINT=endpoint, MODELSCOPE_CACHE=str(cache),
               MODELSCOPE_HOME=str(home / ".modelscope"), HOME=str(home))
    if token is not None:
        env["MODELSCOPE_API_TOKEN"] = token
    return env


def run(endpoint: str, ops: list[dict], cache: Path, *, token: str | None = None,
        timeout: float = 120) -> tuple[list[Outcome], str]:
    """Run `ops` (dicts: "op" = snapshot | file | search | info | files | revisions, and its
    arguments; `cache` is filled in) in one client subprocess; their outcomes and its stderr."""
    cache = Path(cache)
    ops = [{"cache": str(cache), **op} if op["op"] in ("snapshot", "file") else op
           for op in ops]
    result = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(ops)],
                            env=client_env(endpoint, cache, token), capture_output=True,
                            text=True, timeout=timeout, cwd=cache.parent)
    parsed = [json.loads(line[len(_MARK):]) for line in result.stdout.splitlines()
              if line.startswith(_MARK)]
    outcomes = [Outcome(d["ok"], d.get("value"), d.get("error"), tuple(d.get("chain", ())),
                        d.get("message", "")) for d in parsed]
    assert len(outcomes) == len(ops), (
        f"the client subprocess exited {result.returncode} after {len(outcomes)} of {len(ops)} "
        f"operations:\n{result.stderr[-3000:]}")
    return outcomes, result.stderr


def call(endpoint: str, op: dict, cache: Path | None = None, *, token: str | None = None,
         timeout: float = 120):
    """One operation's value; ClientFailed if the client raised. Without `cache`, a throwaway
    folder holds the client's cache and home."""
    if cache is None:
        with tempfile.TemporaryDirectory(prefix="msclient-") as folder:
            return call(endpoint, op, Path(folder) / "cache", token=token, timeout=timeout)
    (outcome,), stderr = run(endpoint, [op], cache, token=token, timeout=timeout)
    if not outcome.ok:
        raise ClientFailed(op, outcome, stderr)
    return outcome.value


def snapshot_download(endpoint: str, repo_id: str, cache: Path, *, revision: str | None = None,
                      token: str | None = None, repo_type: str = "model",
                      allow_patterns: list[str] | None = None) -> Path:
    return Path(call(endpoint, {"op": "snapshot", "repo_id": repo_id, "revision": revision,
                                "repo_type": repo_type, "allow_patterns": allow_patterns},
                     cache, token=token))


def model_file_download(endpoint: str, repo_id: str, path: str, cache: Path, *,
                        revision: str | None = None, token: str | None = None,
                        repo_type: str = "model") -> Path:
    """`model_file_download` (`dataset_file_download` for a dataset). With `revision=None` the
    client picks a tag by `CreatedAt` (PROTOCOLS.md 2.2), so the file may land under it."""
    return Path(call(endpoint, {"op": "file", "repo_id": repo_id, "path": path,
                                "revision": revision, "repo_type": repo_type},
                     cache, token=token))


def list_models(endpoint: str, owner: str | None = None, search: str | None = None, *,
                token: str | None = None) -> list[str]:
    """Repo ids from `HubApi.list_repos("model", owner=, search=)`, every page."""
    return call(endpoint, {"op": "search", "owner": owner, "text": search}, token=token)


def repo_info(endpoint: str, repo_id: str, *, token: str | None = None,
              repo_type: str = "model") -> dict:
    """`HubApi().get_model(repo_id)` (legacy PascalCase keys), JSON-serialised."""
    return call(endpoint, {"op": "info", "repo_id": repo_id, "repo_type": repo_type},
                token=token)


def list_files(endpoint: str, repo_id: str, *, revision: str | None = None,
               token: str | None = None) -> list[dict]:
    """`HubApi().get_model_files`: {"Path", "Size"} of every entry, folders included."""
    return call(endpoint, {"op": "files", "repo_id": repo_id, "revision": revision},
                token=token)


def snapshot_files(root: Path) -> dict[str, bytes]:
    """Every regular file under `root`, by its path relative to it."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _battery_ops(repo_id: str, files: dict[str, bytes], tag: str | None,
                 file_cache: Path) -> list[dict]:
    owner, name = repo_id.split("/")
    top = next(p for p in sorted(files) if "/" not in p and " " not in p)
    sub = next((p for p in sorted(files) if "/" in p), None)
    spaced = next((p for p in sorted(files) if " " in p), None)
    assert sub and spaced, "the battery needs a file in a subfolder and one with a space"
    ops = [{"op": "snapshot", "repo_id": repo_id}]
    if tag:
        ops.append({"op": "snapshot", "repo_id": repo_id, "revision": tag})
    # into a cache of their own: in the snapshots' cache they would be cache hits
    for path, revision in ((top, None), (top, "master"), (sub, None), (spaced, None)):
        ops.append({"op": "file", "repo_id": repo_id, "path": path, "revision": revision,
                    "cache": str(file_cache)})
    return ops + [{"op": "search", "owner": owner}, {"op": "search", "text": name},
                  {"op": "info", "repo_id": repo_id}, {"op": "files", "repo_id": repo_id}]


def battery(endpoint: str, repo_id: str, files: dict[str, bytes], tmp_path: Path, *,
            tag: str | None = None, token: str | None = None) -> dict:
    """The stock client's everyday calls against `endpoint`, in one subprocess: snapshots at the
    default revision and at `tag`, single files (revision None and "master"; a top-level one, one
    in a subfolder, one with a space), search by owner and by name, repo info, the file list.
    Every file must be byte-identical to `files`, the whole snapshot at both revisions.

    `tag`, if given, must be the newest tag created before the SDK's release date (2026-10-09):
    an unpinned `model_file_download` lands there; without it, under master."""
    ops = _battery_ops(repo_id, files, tag, Path(tmp_path) / "ms-battery-files")
    outcomes, stderr = run(endpoint, ops, Path(tmp_path) / "ms-battery", token=token)
    for op, outcome in zip(ops, outcomes, strict=True):
        if not outcome.ok:
            raise ClientFailed(op, outcome, stderr)
    values = [o.value for o in outcomes]
    snapshots = values[:2] if tag else values[:1]
    for path, revision in zip(snapshots, ("master", tag), strict=False):
        assert Path(path).name == revision, f"a snapshot at {revision} landed in {path}"
        assert snapshot_files(Path(path)) == files, f"the snapshot at {revision} differs"
    singles = values[len(snapshots):len(snapshots) + 4]
    for op, path in zip(ops[len(snapshots):], singles, strict=False):
        expected = op["revision"] or tag or "master"
        assert path.endswith(f"/snapshots/{expected}/{op['path']}"), (op, path)
        assert Path(path).read_bytes() == files[op["path"]], f"{op['path']} differs"
    by_owner, by_name, info, listed = values[-4:]
    _check_metadata(repo_id, files, by_owner, by_name, info, listed)
    return {"snapshots": snapshots, "files": singles, "info": info, "listed": listed}


def _check_metadata(repo_id: str, files: dict[str, bytes], by_owner: list, by_name: list,
                    info: dict, listed: list[dict]) -> None:
    owner, name = repo_id.split("/")
    assert repo_id in by_owner and all(i.startswith(f"{owner}/") for i in by_owner), by_owner
    assert repo_id in by_name, by_name
    assert (info.get("Owner"), info.get("Name")) == (owner, name), info
    folders = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    sizes = {f["Path"]: f["Size"] for f in listed if f["Path"] not in folders}
    assert sizes == {p: len(data) for p, data in files.items()}, sizes
