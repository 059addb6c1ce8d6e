"""Kaggle Models as an upstream, over the RPC that `kagglehub` speaks through kagglesdk.

We are the client here (PROTOCOLS.md section 3.1): `POST {endpoint}/v1/models.ModelApiService/
<Method>` with a camelCase JSON body. A model instance `owner/model/framework/variation` has
numbered, immutable versions; each becomes the tag `v{N}` of the repo
`owner/model.framework.variation` (the HF client allows one `/`; DESIGN.md section 2), the latest
also `main`. Kaggle has no commits: a version's commit is derived from its verified files. Its
file list has no hashes: the only one is the MD5 that Google Cloud Storage sends with the bytes
(`x-goog-hash: crc32c=...,md5=<base64>`), checked when present; the catalog records per file
whether an MD5 or nothing stood behind it. A download is a redirect to a signed storage URL;
a cut transfer resumes with `Range` against that URL, and asks the RPC again once it expires.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from peer.errors import BadRequest, RemoteError, RemoteRepoNotFound
from peer.hfformat import is_lfs_by_rule
from peer.http import error_from
from peer.paths import ascii_digits, check_repo_id

from . import Answered, RemoteFile, UpstreamError
from .client import HttpUpstream

SERVICE = "models.ModelApiService"
#: files asked per page of ListModelInstanceVersionFiles (kagglehub asks 25)
FILES_PAGE = 500
MAX_PAGES = 10_000
#: kagglesdk's ModelFramework enum (models/types/model_enums.py), less its prefix
FRAMEWORKS = ("TENSOR_FLOW_1", "TENSOR_FLOW_2", "TF_LITE", "TF_JS", "PY_TORCH", "JAX", "FLAX",
              "PAX", "MAX_TEXT", "GEMMA_CPP", "GGML", "GGUF", "CORAL", "SCIKIT_LEARN", "MXNET",
              "ONNX", "KERAS", "TRANSFORMERS", "API", "OTHER", "TENSOR_RT_LLM", "TRITON", "VLLM")
#: a handle's framework (`pyTorch`, `tensorFlow2`, any case) without case or underscores
_BY_LOWER = {f.replace("_", "").lower(): f for f in FRAMEWORKS}
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def framework_enum(framework: str) -> str:
    """`pyTorch` → `MODEL_FRAMEWORK_PY_TORCH`, as kagglehub's `to_enum` finds it."""
    name = _BY_LOWER.get(framework.replace("_", "").lower())
    if name is None:
        raise BadRequest(f"unknown Kaggle framework {framework!r}")
    return f"MODEL_FRAMEWORK_{name}"


#: the revision of a spec that names every version of an instance (`.../variation/*`)
EVERY_VERSION = "*"


def parse_handle(handle: str) -> tuple[str, str]:
    """`owner/model/framework/variation[/version|/*]` → (repo id, revision: `v{N}`, `main`,
    or `*` for every version)."""
    parts = handle.strip("/").split("/")
    if len(parts) not in (4, 5) or not all(_SLUG.fullmatch(p) for p in parts[:4]):
        raise BadRequest(f"{handle!r}: a Kaggle handle is owner/model/framework/variation"
                         f"[/version]")
    owner, model, framework, variation = parts[:4]
    framework_enum(framework)
    revision = "main"
    if len(parts) == 5 and parts[4] == EVERY_VERSION:
        revision = EVERY_VERSION
    elif len(parts) == 5:
        number = ascii_digits(parts[4])
        if number is None or number < 1 or len(parts[4]) > 9:
            raise BadRequest(f"{handle!r}: the version is a number from 1")
        revision = f"v{number}"
    repo_id = check_repo_id(f"{owner}/{model}.{framework}.{variation}")
    return repo_id, revision


def instance(repo_id: str) -> dict[str, str]:
    """The RPC's names of an instance from its repo id `owner/model.framework.variation`: the
    framework is the one part from the fixed list (slugs may hold dots: `llama-3.1`, `1.1-2b`)."""
    owner, _, rest = repo_id.partition("/")
    parts = rest.split(".")
    for i, part in enumerate(parts[1:-1], start=1):
        if part.replace("_", "").lower() in _BY_LOWER:
            return {"ownerSlug": owner, "modelSlug": ".".join(parts[:i]),
                    "framework": framework_enum(part), "instanceSlug": ".".join(parts[i + 1:])}
    raise BadRequest(f"{repo_id!r} is no Kaggle repo id (owner/model.framework.variation)")


def handle_of(repo_id: str, revision: str) -> str:
    """The Kaggle handle a repo id and revision stand for (the inverse of `parse_handle`)."""
    owner, _, rest = repo_id.partition("/")
    parts = rest.split(".")
    for i, part in enumerate(parts[1:-1], start=1):
        if part.replace("_", "").lower() in _BY_LOWER:
            handle = f"{owner}/{'.'.join(parts[:i])}/{part}/{'.'.join(parts[i + 1:])}"
            if revision == EVERY_VERSION:
                return f"{handle}/{EVERY_VERSION}"
            return handle + (f"/{revision[1:]}" if revision.startswith("v") else "")
    raise BadRequest(f"{repo_id!r} is no Kaggle repo id (owner/model.framework.variation)")


def goog_md5(header: str | None) -> str | None:
    """The hex MD5 in `x-goog-hash: crc32c=...,md5=<base64>` (None when absent or malformed:
    a header that does not parse must not pass for a checked file, so it is reported)."""
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "md5":
            try:
                digest = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise UpstreamError(f"x-goog-hash has an md5 that is not base64: {value!r}") from None
            if len(digest) != 16:
                raise UpstreamError(f"x-goog-hash has an md5 of {len(digest)} bytes")
            return digest.hex()
    return None


def stored_credentials(environ=os.environ) -> str | None:
    """Kaggle's own credential files, after the settings and variables: `access_token` (a
    bearer token) or `kaggle.json` (`username:key`), in KAGGLE_CONFIG_DIR or ~/.kaggle."""
    folder = Path(environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    try:
        token = (folder / "access_token").read_text("utf-8").strip()
        if token:
            return token
    except OSError:
        pass
    try:
        pair = json.loads((folder / "kaggle.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(pair, dict) and pair.get("username") and pair.get("key"):
        return f"{pair['username']}:{pair['key']}"
    return None


class Kaggle(HttpUpstream):
    token_setting = ("mirror.upstreams.kaggle.token (or KAGGLE_API_TOKEN, KAGGLE_USERNAME and "
                     "KAGGLE_KEY, ~/.kaggle/kaggle.json)")
    hashed = False
    derives_commit = True
    md5_in_answers = True

    def __init__(self, endpoint: str, *, name: str = "kaggle",
                 setting: str = "mirror.upstreams.kaggle.endpoint", **manners):
        super().__init__(endpoint, name=name, setting=setting, **manners)
        self._latest: dict[str, int] = {}
        #: (repo id, version, path) → the signed storage URL a download was sent to
        self._signed: dict[tuple[str, str, str], str] = {}

    def credentials(self) -> dict[str, str]:
        if not self.token:
            return {}
        if ":" in self.token:  # username:key, as KAGGLE_USERNAME and KAGGLE_KEY give it
            basic = base64.b64encode(self.token.encode()).decode()
            return {"Authorization": f"Basic {basic}"}
        return {"Authorization": f"Bearer {self.token}"}

    async def refusal(self, response: aiohttp.ClientResponse) -> RemoteError:
        error = await super().refusal(response)
        return _not_found(error) if error.http_status == 404 else error

    async def _rpc(self, method: str, body: dict) -> dict:
        url = f"{self.endpoint}/v1/{SERVICE}/{method}"
        answer, _ = await self.json("POST", url, json=body)
        if not isinstance(answer, dict):
            raise UpstreamError(f"{self.name}: {method} answered no JSON object")
        code = answer.get("code")
        if isinstance(code, int) and code >= 400:
            error = error_from(code, {}, json.dumps(answer), url, self.name)
            raise _not_found(error) if code == 404 else self._refused_token(error)
        return answer

    async def latest(self, repo_id: str) -> int:
        if repo_id not in self._latest:
            answer = await self._rpc("GetModelInstance", instance(repo_id))
            number = answer.get("versionNumber")
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise UpstreamError(f"{self.name}: {handle_of(repo_id, 'main')}: no version")
            self._latest[repo_id] = number
        return self._latest[repo_id]

    async def versions(self, repo_id: str) -> list[int]:
        """Every version number of the instance, oldest first."""
        body, numbers = {**instance(repo_id), "pageSize": 100}, set()
        for _ in range(MAX_PAGES):
            answer = await self._rpc("ListModelInstanceVersions", body)
            listed = (answer.get("versionList") or {}).get("versions") or []
            for v in listed if isinstance(listed, list) else []:
                number = v.get("versionNumber") if isinstance(v, dict) else None
                if isinstance(number, int) and not isinstance(number, bool) and number > 0:
                    numbers.add(number)
            if not answer.get("nextPageToken"):
                return sorted(numbers)
            body["pageToken"] = answer["nextPageToken"]
        raise UpstreamError(f"{self.name}: more than {MAX_PAGES} pages of versions")

    async def resolve(self, repo_type: str, repo_id: str, revision: str) -> str:
        if repo_type != "model":
            raise BadRequest("Kaggle upstreams hold models only")
        if revision == "main":
            return str(await self.latest(repo_id))
        number = ascii_digits(revision[1:]) if revision.startswith("v") else None
        if number is None or number < 1:
            raise BadRequest(f"{revision!r}: a Kaggle revision is main or v<N>")
        return str(number)

    async def refs_for(self, repo_type: str, repo_id: str, revision: str,
                       key: str) -> list[tuple[str, str]]:
        refs = [("tag", f"v{key}")]
        if int(key) == await self.latest(repo_id):
            refs.append(("branch", "main"))
        return refs

    async def list_files(self, repo_type: str, repo_id: str, commit: str) -> list[RemoteFile]:
        body = {**instance(repo_id), "versionNumber": int(commit), "pageSize": FILES_PAGE}
        files: list[RemoteFile] = []
        for _ in range(MAX_PAGES):
            answer = await self._rpc("ListModelInstanceVersionFiles", body)
            entries = answer.get("files") or []
            if not isinstance(entries, list):
                raise UpstreamError(f"{self.name}: a file list that is not a list")
            for e in entries:
                if not isinstance(e, dict):
                    raise UpstreamError(f"{self.name}: a file entry that is not an object")
                path, size = e.get("name"), _size(e.get("size"))
                lfs = is_lfs_by_rule(path, size) if isinstance(path, str) and \
                    isinstance(size, int) else False
                files.append(RemoteFile(path=path, size=size, git_sha1=None, sha256=None,
                                        lfs=lfs))
            token = answer.get("nextPageToken")
            if not token:
                return files
            body["pageToken"] = token
        raise UpstreamError(f"{self.name}: more than {MAX_PAGES} pages of files")

    async def open(self, repo_type: str, repo_id: str, commit: str, path: str,
                   offset: int = 0, *, expect: RemoteFile | None = None,
                   answered: Answered | None = None) -> AsyncIterator[bytes]:
        """The file's bytes from `offset`: the RPC redirects to signed storage; a resume asks
        that URL again with `Range`, and the RPC anew when the URL no longer answers."""
        key = (repo_id, commit, path)
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = None
        if offset and key in self._signed:
            try:
                response = await self.follow("GET", self._signed[key], headers)
            except RemoteError:
                self._signed.pop(key, None)  # expired: ask the RPC for a new one
        if response is None:
            body = {**instance(repo_id), "versionNumber": int(commit), "path": path}
            response = await self.follow("POST", f"{self.endpoint}/v1/{SERVICE}/"
                                         f"DownloadModelInstanceVersion", headers, json=body)
            self._signed[key] = str(response.url)
        md5 = goog_md5(response.headers.get("x-goog-hash"))
        if answered is not None and md5:
            if answered.md5 and answered.md5 != md5:
                response.release()
                raise UpstreamError(f"{self.name}: {path}: two answers named two MD5s")
            answered.md5 = md5
        async for chunk in self.stream(response, offset, path):
            yield chunk


def _size(value):
    """Sizes come as JSON numbers or, from protobuf's int64 mapping, as decimal strings."""
    if isinstance(value, str):
        return ascii_digits(value) if len(value) <= 19 else None
    return value


def _not_found(error: RemoteError) -> RemoteError:
    found = RemoteRepoNotFound(message=str(error))
    found.url, found.http_status = error.url, error.http_status
    return found
