"""A fake Kaggle Models API for tests: the upstream `kagglehub` and our Kaggle sync client talk to.

It speaks the RPC of PROTOCOLS.md section 3.1 as kagglesdk 0.1.38 calls it: `POST
/api/v1/models.ModelApiService/<Method>` with a camelCase JSON body, answered in proto3 JSON
(enum names, fields at their default value left out). A download is a 302 to a V4-signed URL on a
second server playing Google Cloud Storage, which sends the bytes with `x-goog-hash:
crc32c=...,md5=...` and honours `Range`. A version without `path` is served as one tar.gz, which
kagglehub extracts. Errors are `{"code": N, "message": ...}` with HTTP status N, which is how
kagglesdk recognises them (`kaggle_http_client.py:_prepare_response`).

`KAGGLE_API_ENVIRONMENT=TEST` sends kagglehub to `http://localhost:7777/api` and nowhere else, so
tests with the stock client start this on port 7777 (`tests/kaggleclient.py`); other tests use port
0. Both servers are real aiohttp servers on 127.0.0.1, served from one event loop in a daemon
thread, like tests/fakehub.py. Knobs make it misbehave the ways a real upstream does: 429s, cut
transfers, corrupt bytes, hashes that lie, hostile listings, odd redirects, expired URLs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import gzip
import hashlib
import hmac
import io
import itertools
import json
import math
import re
import socket
import tarfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from aiohttp import web
from fakehub import _flip_middle_byte, byte_range
from fakeserver import LoopServers

SERVICE = "models.ModelApiService"
#: the port KAGGLE_API_ENVIRONMENT=TEST points kagglehub at (kagglesdk/kaggle_env.py)
TEST_PORT = 7777
TOKEN = "KGAT_fake-kaggle-token"
BASIC = ("kaggle-user", "kaggle-key")
BUCKET = "kaggle-models-data"
#: an RPC request's JSON body, parsed once by the middleware (None: not JSON)
BODY = web.RequestKey("body", object)
STREAM_CHUNK = 256 * 1024
#: pageSize when a request sends none, and the most any listing but the file list gives
DEFAULT_PAGE, MAX_PAGE = 20, 100
#: kagglesdk's ModelFramework (models/types/model_enums.py): the name is what goes on the wire
FRAMEWORKS = {
    "MODEL_FRAMEWORK_UNSPECIFIED": 0, "MODEL_FRAMEWORK_TENSOR_FLOW_1": 1,
    "MODEL_FRAMEWORK_TENSOR_FLOW_2": 2, "MODEL_FRAMEWORK_TF_LITE": 3, "MODEL_FRAMEWORK_TF_JS": 4,
    "MODEL_FRAMEWORK_PY_TORCH": 5, "MODEL_FRAMEWORK_JAX": 6, "MODEL_FRAMEWORK_FLAX": 14,
    "MODEL_FRAMEWORK_PAX": 15, "MODEL_FRAMEWORK_MAX_TEXT": 17, "MODEL_FRAMEWORK_GEMMA_CPP": 18,
    "MODEL_FRAMEWORK_GGML": 19, "MODEL_FRAMEWORK_GGUF": 21, "MODEL_FRAMEWORK_CORAL": 7,
    "MODEL_FRAMEWORK_SCIKIT_LEARN": 8, "MODEL_FRAMEWORK_MXNET": 9, "MODEL_FRAMEWORK_ONNX": 10,
    "MODEL_FRAMEWORK_KERAS": 11, "MODEL_FRAMEWORK_TRANSFORMERS": 16, "MODEL_FRAMEWORK_API": 12,
    "MODEL_FRAMEWORK_OTHER": 13, "MODEL_FRAMEWORK_TENSOR_RT_LLM": 20,
    "MODEL_FRAMEWORK_TRITON": 22, "MODEL_FRAMEWORK_VLLM": 23,
}
#: kagglesdk's ListModelsOrderBy
SORT_ORDERS = ("LIST_MODELS_ORDER_BY_UNSPECIFIED", "LIST_MODELS_ORDER_BY_HOTNESS",
               "LIST_MODELS_ORDER_BY_DOWNLOAD_COUNT", "LIST_MODELS_ORDER_BY_VOTE_COUNT",
               "LIST_MODELS_ORDER_BY_NOTEBOOK_COUNT", "LIST_MODELS_ORDER_BY_PUBLISH_TIME",
               "LIST_MODELS_ORDER_BY_CREATE_TIME", "LIST_MODELS_ORDER_BY_UPDATE_TIME",
               "LIST_MODELS_ORDER_BY_VIEW_TIME_DESC")


class KaggleError(Exception):
    """An RPC error answer: HTTP `status` and the same number as the body's `code`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# -- the functional core: framework names, checksums, pages, JSON shapes ---------------------


def _camel_to_snake(value: str) -> str:
    value = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", value)
    return re.sub("([a-z0-9])([A-Z])", r"\1_\2", value).lower()


def framework_enum(framework: str) -> str:
    """A handle's framework text as the enum name kagglehub sends (`kagglehub/enum.py:to_enum`):
    camelCase to UPPER_SNAKE, then the name itself, with the `MODEL_FRAMEWORK_` prefix, or equal
    to one once underscores are dropped (`pyTorch` → PY_TORCH, `tensorFlow2` → TENSOR_FLOW_2)."""
    key = _camel_to_snake(framework).upper()
    for name in (key, f"MODEL_FRAMEWORK_{key}"):
        if name in FRAMEWORKS:
            return name
    squashed = f"MODELFRAMEWORK{key}".replace("_", "")
    for name in FRAMEWORKS:
        if name.replace("_", "") == squashed:
            return name
    raise ValueError(f"{framework!r} is not a valid ModelFramework")


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return table


_CRC_TABLE = _crc_table()


def _crc_register(register: int, data: bytes) -> int:
    for byte in data:
        register = _CRC_TABLE[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


def _crc_registers(registers, rows):
    """Each of `registers` (a numpy uint32 array) fed its own column of the byte rows."""
    import numpy as np

    table = np.array(_CRC_TABLE, dtype=np.uint32)
    for row in rows:
        registers = table[(registers ^ row) & 0xFF] ^ (registers >> 8)
    return registers


def crc32c(data: bytes, *, lanes: int = 4096) -> int:
    """CRC-32C (Castagnoli), as GCS sends it. Large data is cut into `lanes` runs whose raw
    registers numpy advances side by side; the register is linear over GF(2), so the whole is
    each run's register XORed onto the state shifted past one run (a linear map, known from 32
    basis registers pushed through a run of zeros)."""
    if len(data) < 64 * lanes:
        return _crc_register(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    import numpy as np

    run = len(data) // lanes
    body = np.frombuffer(data, dtype=np.uint8, count=run * lanes).reshape(lanes, run)
    runs = _crc_registers(np.zeros(lanes, dtype=np.uint32), np.ascontiguousarray(body.T))
    basis = _crc_registers(np.uint32(1) << np.arange(32, dtype=np.uint32),
                           itertools.repeat(np.uint8(0), run))
    columns = [int(c) for c in basis]
    state = 0xFFFFFFFF
    for register in runs.tolist():
        shifted = 0
        for bit in range(32):
            if state >> bit & 1:
                shifted ^= columns[bit]
        state = shifted ^ register
    return _crc_register(state, data[run * lanes:]) ^ 0xFFFFFFFF


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def iso_ms(ts: float) -> str:
    """A proto Timestamp as kagglesdk's DateTimeSerializer writes and reads it."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{int(ts * 1000) % 1000:03d}Z"


def proto(message: dict) -> dict:
    """proto3 JSON leaves out fields at their default (0, "", false, empty list): an empty
    file's `size`, the last page's `nextPageToken`."""
    return {k: v for k, v in message.items() if v not in (0, "", False, None, [], {})}


def _page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _page_offset(token: object) -> int:
    if token in (None, ""):
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(str(token)))["offset"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise KaggleError(400, f"Invalid page token: {token!r}") from None
    if not isinstance(offset, int) or offset < 0:
        raise KaggleError(400, f"Invalid page token: {token!r}")
    return offset


def _number(body: dict, key: str) -> int | None:
    """An integer field: a JSON number or, as protobuf's JSON mapping allows, a decimal string."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise KaggleError(400, f"Invalid value for {key}: {value!r}")


def page(items: list, body: dict, cap: int) -> tuple[list, str]:
    """One page of `items` for the request's pageSize and pageToken, and the next page's token
    ('' after the last)."""
    size = _number(body, "pageSize") or 0
    size = min(size if size > 0 else DEFAULT_PAGE, cap)
    start = _page_offset(body.get("pageToken"))
    end = start + size
    return items[start:end], (_page_token(end) if end < len(items) else "")


def tar_gz(files: dict[str, bytes], mtime: float) -> bytes:
    """A version's files as one deterministic tar.gz (kagglehub tries tar, then zip)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(files[path]), int(mtime), 0o644
            tar.addfile(info, io.BytesIO(files[path]))
    return buffer.getvalue()


def check_path(path: str) -> str:
    if (not path or "\0" in path or "\\" in path or path.startswith("/")
            or any(part in ("", ".", "..") for part in path.split("/"))):
        raise ValueError(f"not a relative file path: {path!r}")
    return path


def _gcs_error(status: int, code: str, message: str) -> web.Response:
    body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
            f"<Message>{message}</Message></Error>")
    return web.Response(status=status, text=body, content_type="application/xml")


# -- the content --------------------------------------------------------------------------


@dataclass
class _Object:
    """One object in the fake bucket, with the hashes GCS would have stored for it."""

    name: str
    data: bytes
    md5: str
    crc32c: str
    created: float
    corrupt: bool = False
    wrong_md5: bool = False

    @classmethod
    def of(cls, name: str, data: bytes, created: float) -> _Object:
        crc = crc32c(data).to_bytes(4, "big")
        return cls(name, data, _b64(hashlib.md5(data).digest()), _b64(crc), created)


@dataclass
class _Version:
    id: int
    number: int
    created: float
    objects: dict[str, _Object]  # by file path
    archive: _Object
    listed_sizes: dict[str, int] = field(default_factory=dict)
    raw_files: list[dict] | None = None

    @property
    def total_bytes(self) -> int:
        return sum(len(o.data) for o in self.objects.values())


@dataclass
class _Instance:
    id: int
    framework: str  # the enum name
    framework_text: str  # as in the handle that created it, for URLs
    slug: str
    versions: list[_Version] = field(default_factory=list)


@dataclass
class _Model:
    id: int
    owner: str
    slug: str
    title: str
    created: float
    instances: dict[tuple[str, str], _Instance] = field(default_factory=dict)

    @property
    def updated(self) -> float:
        return max((i.versions[-1].created for i in self.instances.values()), default=self.created)


def instance_json(model: _Model, inst: _Instance, web_url: str, *, as_string: bool) -> dict:
    """ApiModelInstance; its versionNumber is the latest version."""
    latest = inst.versions[-1]
    total = latest.total_bytes
    return proto({
        "id": inst.id, "slug": inst.slug, "framework": inst.framework,
        "versionId": latest.id, "versionNumber": latest.number,
        "url": f"{web_url}/models/{model.owner}/{model.slug}/{inst.framework_text}/{inst.slug}",
        "licenseName": "Apache 2.0", "modelInstanceType": "MODEL_INSTANCE_TYPE_BASE_MODEL",
        "totalUncompressedBytes": str(total) if as_string else total,
    })


def version_json(model: _Model, inst: _Instance, version: _Version, web_url: str) -> dict:
    """ModelInstanceVersion (models/types/model_types.py)."""
    return proto({
        "id": version.id, "framework": inst.framework, "variationSlug": inst.slug,
        "versionNumber": version.number, "modelTitle": model.title, "modelId": model.id,
        "ownerSlug": model.owner, "modelSlug": model.slug, "modelInstanceId": inst.id,
        "url": f"{web_url}/models/{model.owner}/{model.slug}/{inst.framework_text}/"
               f"{inst.slug}/{version.number}",
    })


def model_json(model: _Model, web_url: str, *, as_string: bool) -> dict:
    """ApiModel, as ListModels and GetModel answer it."""
    return proto({
        "id": model.id, "ref": f"{model.owner}/{model.slug}", "title": model.title,
        "author": model.owner, "slug": model.slug, "url": f"{web_url}/models/{model.owner}/"
        f"{model.slug}", "publishTime": iso_ms(model.created), "updateTime": iso_ms(model.updated),
        "instances": [instance_json(model, i, web_url, as_string=as_string)
                      for i in model.instances.values()],
    })


def file_entries(version: _Version, *, as_string: bool) -> list[dict]:
    """ApiModelFile entries, by name: no hashes (PROTOCOLS.md 3.1); sizes as listed."""
    entries = []
    for path in sorted(version.objects):
        size = version.listed_sizes.get(path, len(version.objects[path].data))
        entries.append(proto({"name": path, "size": str(size) if as_string else size,
                              "creationDate": iso_ms(version.created)}))
    return entries


# -- the shell ------------------------------------------------------------------------------


class FakeKaggle(LoopServers):
    thread_name = "fakekaggle"

    """Kaggle's API on 127.0.0.1:`port` and its storage on 127.0.0.1:0 (see the module
    docstring); `start()` before use. `token` requires `Authorization: Bearer <token>`, `basic`
    HTTP Basic with that (user, key); with both, either will do; with neither, anyone may."""

    def __init__(self, port: int = 0, *, token: str | None = None,
                 basic: tuple[str, str] | None = None, rate_limit_every: int = 0,
                 retry_after: float = 1, cut_large_files: bool = False,
                 large_file: int = 8 * 1024 * 1024, no_hash: bool = False,
                 redirect_scheme: str | None = None, send_rate: float | None = None,
                 files_page_size: int = 1000, int64_as_string: bool = False):
        self.port = port
        self.token, self.basic = token, basic
        #: every Nth RPC is answered 429 with `Retry-After: retry_after` (0: never)
        self.rate_limit_every, self.retry_after = rate_limit_every, retry_after
        #: the first GET of each object of `large_file` bytes or more sends half, then the
        #: connection is closed; later GETs (with or without Range) are whole
        self.cut_large_files, self.large_file = cut_large_files, large_file
        #: storage sends no x-goog-hash at all
        self.no_hash = no_hash
        #: "ftp://" puts that scheme on the signed URL; anything else ("file:///etc/passwd")
        #: is sent as the whole Location
        self.redirect_scheme = redirect_scheme
        #: bytes/s at which storage bodies leave (None: as fast as the socket takes them)
        self.send_rate = send_rate
        #: the most files one ListModelInstanceVersionFiles page holds, whatever pageSize says
        self.files_page_size = files_page_size
        #: int64 fields (size, totalUncompressedBytes) as decimal strings, as protobuf's JSON
        #: mapping writes them
        self.int64_as_string = int64_as_string
        self.url = ""
        self.gcs_url = ""
        self.requests: list[tuple[str, str, dict | None]] = []
        self.auth_headers: list[str | None] = []
        self.gcs_requests: list[tuple[str, str, str | None]] = []
        self.gcs_auth_headers: list[str | None] = []
        self.bytes_served = 0
        self._rpc_count = 0
        self._models: dict[tuple[str, str], _Model] = {}
        self._objects: dict[str, _Object] = {}
        self._cut_done: set[str] = set()
        self._ids = 0
        self._url_generation = 0
        self._secret = hashlib.sha256(b"fake-gcs-signing-key").digest()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self._methods = {
            "GetModel": self._get_model, "GetModelInstance": self._get_model_instance,
            "ListModelInstanceVersions": self._list_versions,
            "ListModelInstanceVersionFiles": self._list_files,
            "DownloadModelInstanceVersion": self._download, "ListModels": self._list_models,
        }

    @property
    def endpoint(self) -> str:
        """Where `{endpoint}/v1/{service}/{method}` lands: what kagglesdk makes of TEST."""
        return f"{self.url}/api"

    # -- lifecycle

    async def _start_servers(self) -> None:
        api = web.Application(middlewares=[self._api_middleware])
        api.router.add_route("*", "/api/v1/{service}/{method}", self._rpc)
        api.router.add_route("*", "/{tail:.*}", self._no_route)
        gcs = web.Application(middlewares=[self._gcs_middleware])
        gcs.router.add_route("*", "/{bucket}/{name:.+}", self._gcs_handler)
        ports = [(await self._listen(app, port))[1] for app, port in ((api, self.port), (gcs, 0))]
        if self.port:
            await self._also_on_ipv6_localhost(self._runners[0], self.port)
        self.url, self.gcs_url = (f"http://127.0.0.1:{p}" for p in ports)

    @staticmethod
    async def _also_on_ipv6_localhost(runner: web.AppRunner, port: int) -> None:
        """kagglehub dials `localhost`: where that names ::1 too, listen there, or a stranger on
        [::1]:port would take the client's first attempt."""
        try:
            names = socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)
        except OSError:
            return
        if not any(family == socket.AF_INET6 for family, *_ in names):
            return
        try:
            await web.TCPSite(runner, "::1", port).start()
        except OSError as e:
            if e.errno == errno.EADDRINUSE:  # someone else answers localhost there
                raise

    # -- content

    def add_version(self, owner: str, model: str, framework: str, variation: str,
                    files: dict[str, bytes], *, title: str | None = None) -> int:
        """Version N+1 of the instance owner/model/framework/variation (created as needed),
        holding exactly `files`; returns N+1. `framework` is the handle's text (`pyTorch`)."""
        enum = framework_enum(framework)
        if enum == "MODEL_FRAMEWORK_UNSPECIFIED":
            raise ValueError("an instance needs a framework")
        for path in files:
            check_path(path)
        now = time.time()
        with self._lock:
            m = self._models.setdefault((owner.lower(), model.lower()), _Model(
                self._next_id(), owner.lower(), model.lower(), title or model, now))
            inst = m.instances.setdefault((enum, variation.lower()), _Instance(
                self._next_id(), enum, framework, variation.lower()))
            number, version_id = len(inst.versions) + 1, self._next_id()
            prefix = f"{BUCKET}/{inst.id}/{version_id}"
            objects = {p: _Object.of(f"{prefix}/files/{p}", files[p], now) for p in files}
            archive = _Object.of(f"{prefix}/bundle/archive.tar.gz", tar_gz(files, now), now)
            inst.versions.append(_Version(version_id, number, now, objects, archive))
            for obj in (*objects.values(), archive):
                self._objects[obj.name] = obj
        return number

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _version_of(self, handle: str, version: int) -> _Version:
        owner, model, framework, variation = handle.split("/")
        m = self._models[(owner.lower(), model.lower())]
        return m.instances[(framework_enum(framework), variation.lower())].versions[version - 1]

    def _object_of(self, handle: str, version: int, path: str | None) -> _Object:
        v = self._version_of(handle, version)
        return v.archive if path is None else v.objects[path]

    def corrupt(self, handle: str, version: int, path: str | None) -> None:
        """Storage serves that file (None: the version's archive) with one byte flipped, while
        x-goog-hash keeps the true md5 and crc32c."""
        self._object_of(handle, version, path).corrupt = True

    def repair(self, handle: str, version: int, path: str | None) -> None:
        obj = self._object_of(handle, version, path)
        obj.corrupt = obj.wrong_md5 = False

    def wrong_md5(self, handle: str, version: int, path: str | None) -> None:
        """The true bytes, under an x-goog-hash whose md5 is another's."""
        self._object_of(handle, version, path).wrong_md5 = True

    def lie_size(self, handle: str, version: int, path: str, size: int) -> None:
        """The file list gives `size` for that file; storage still sends the true bytes."""
        self._version_of(handle, version).listed_sizes[path] = size

    def set_raw_files(self, handle: str, version: int, entries: list[dict]) -> None:
        """ListModelInstanceVersionFiles of that version now returns exactly `entries` (paged
        as usual): `..`, absolute names, NUL, duplicates. Downloads still serve the real files."""
        self._version_of(handle, version).raw_files = [dict(e) for e in entries]

    def expire_signed_urls(self) -> None:
        """Every signed URL handed out so far answers 400 ExpiredToken from now on."""
        self._url_generation += 1

    def reset_counts(self) -> None:
        """Forget recorded requests and bytes; the rate limiter's count starts over too."""
        self.requests.clear()
        self.auth_headers.clear()
        self.gcs_requests.clear()
        self.gcs_auth_headers.clear()
        self.bytes_served = 0
        self._rpc_count = 0

    def rpc_methods(self) -> list[str]:
        """The RPC method of every API request so far, in order."""
        return [path.rsplit("/", 1)[-1] for _, path, _ in self.requests]

    # -- the API

    @web.middleware
    async def _api_middleware(self, request: web.Request, handler) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        request[BODY] = body
        self.requests.append((request.method, request.raw_path, body))
        self.auth_headers.append(request.headers.get("Authorization"))
        try:
            self._rate_limit()
            self._authenticate(request)
            return await handler(request)
        except KaggleError as e:
            return web.json_response({"code": e.status, "message": e.message},
                                     status=e.status, headers=e.headers)

    def _rate_limit(self) -> None:
        if not self.rate_limit_every:
            return
        self._rpc_count += 1
        if self._rpc_count % self.rate_limit_every == 0:
            raise KaggleError(429, "Too many requests",
                              {"Retry-After": str(math.ceil(self.retry_after))})

    def _authenticate(self, request: web.Request) -> None:
        if self.token is None and self.basic is None:
            return
        allowed = set()
        if self.token is not None:
            allowed.add(f"Bearer {self.token}")
        if self.basic is not None:
            allowed.add("Basic " + _b64(":".join(self.basic).encode()))
        if request.headers.get("Authorization") not in allowed:
            raise KaggleError(401, "Unauthenticated")

    async def _no_route(self, request: web.Request) -> web.Response:
        raise KaggleError(404, f"No route for {request.path}")

    async def _rpc(self, request: web.Request) -> web.StreamResponse:
        service, method = request.match_info["service"], request.match_info["method"]
        if service != SERVICE or method not in self._methods:
            raise KaggleError(404, f"{service}.{method} is not served by this fake")
        if request.method != "POST":
            raise KaggleError(405, f"{method} takes POST, not {request.method}")
        body = request[BODY]
        if not isinstance(body, dict):
            raise KaggleError(400, "The request body is not a JSON object")
        with self._lock:  # add_version may run in the test's thread meanwhile
            answer = self._methods[method](body)
        return answer if isinstance(answer, web.StreamResponse) else web.json_response(answer)

    def _instance(self, body: dict) -> tuple[_Model, _Instance]:
        slugs = [body.get(k) for k in ("ownerSlug", "modelSlug", "instanceSlug")]
        if not all(isinstance(s, str) for s in slugs):
            raise KaggleError(400, "ownerSlug, modelSlug and instanceSlug are required")
        owner, model, slug = (s.lower() for s in slugs)
        framework = body.get("framework")
        if isinstance(framework, int) and framework in FRAMEWORKS.values():
            framework = next(n for n, v in FRAMEWORKS.items() if v == framework)
        if framework not in FRAMEWORKS:
            raise KaggleError(400, f"Invalid framework: {framework!r}")
        m = self._models.get((owner, model))
        inst = m.instances.get((framework, slug)) if m else None
        if m is None or inst is None:
            raise KaggleError(404, f"Model instance {owner}/{model}/{framework}/{slug} not "
                              "found")
        return m, inst

    def _version(self, inst: _Instance, number: int | None) -> _Version:
        """`number`, or the latest when the request left the optional field out."""
        if number is None:
            return inst.versions[-1]
        if not 1 <= number <= len(inst.versions):
            raise KaggleError(404, f"Model instance version {number} not found")
        return inst.versions[number - 1]

    def _get_model(self, body: dict) -> dict:
        key = (str(body.get("ownerSlug", "")).lower(), str(body.get("modelSlug", "")).lower())
        if key not in self._models:
            raise KaggleError(404, f"Model {key[0]}/{key[1]} not found")
        return model_json(self._models[key], self.url, as_string=self.int64_as_string)

    def _get_model_instance(self, body: dict) -> dict:
        m, inst = self._instance(body)
        return instance_json(m, inst, self.url, as_string=self.int64_as_string)

    def _list_versions(self, body: dict) -> dict:
        m, inst = self._instance(body)
        versions = [version_json(m, inst, v, self.url) for v in reversed(inst.versions)]
        items, token = page(versions, body, MAX_PAGE)
        return proto({"versionList": {"versions": items}, "nextPageToken": token})

    def _list_files(self, body: dict) -> dict:
        _, inst = self._instance(body)
        version = self._version(inst, _number(body, "versionNumber"))
        entries = version.raw_files
        if entries is None:
            entries = file_entries(version, as_string=self.int64_as_string)
        items, token = page(entries, body, self.files_page_size)
        return proto({"files": items, "nextPageToken": token})

    def _download(self, body: dict) -> web.Response:
        """A 302 to the signed storage URL of one file (`path`) or of the version's tar.gz."""
        _, inst = self._instance(body)
        version = self._version(inst, _number(body, "versionNumber") or 0)
        path = body.get("path")
        if path in (None, ""):
            obj = version.archive
        elif not isinstance(path, str) or path not in version.objects:
            raise KaggleError(404, f"File {path!r} not found in version {version.number}")
        else:
            obj = version.objects[path]
        return web.Response(status=302, headers={"Location": self._location(obj)})

    def _list_models(self, body: dict) -> dict:
        search = str(body.get("search") or "").lower()
        owner = str(body.get("owner") or "").lower()
        order = body.get("sortBy") or "LIST_MODELS_ORDER_BY_HOTNESS"
        if order not in SORT_ORDERS:
            raise KaggleError(400, f"Invalid sortBy: {order!r}")
        found = [m for m in self._models.values()
                 if (not owner or m.owner == owner)
                 and (search in f"{m.owner}/{m.slug}" or search in m.title.lower())]
        if order.endswith(("_PUBLISH_TIME", "_CREATE_TIME")):
            found.sort(key=lambda m: -m.created)
        elif order.endswith("_UPDATE_TIME"):
            found.sort(key=lambda m: -m.updated)
        else:
            found.sort(key=lambda m: (m.owner, m.slug))
        models = [model_json(m, self.url, as_string=self.int64_as_string) for m in found]
        items, token = page(models, body, MAX_PAGE)
        return proto({"models": items, "nextPageToken": token, "totalResults": len(found)})

    # -- storage

    def _signature(self, name: str, generation: int) -> str:
        return hmac.new(self._secret, f"{generation}\n{name}".encode(), "sha256").hexdigest()

    def signed_url(self, name: str) -> str:
        """A V4-signed-looking URL of the object `name`, valid until expire_signed_urls()."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        query = urlencode({
            "X-Goog-Algorithm": "GOOG4-RSA-SHA256",
            "X-Goog-Credential": f"kaggle-models@fake.iam.gserviceaccount.com/{stamp[:8]}/auto/"
                                 "storage/goog4_request",
            "X-Goog-Date": stamp, "X-Goog-Expires": "3600", "X-Goog-SignedHeaders": "host",
            "X-Goog-Signature": self._signature(name, self._url_generation),
        })
        return f"{self.gcs_url}/{quote(name, safe='/')}?{query}"

    def _location(self, obj: _Object) -> str:
        signed = self.signed_url(obj.name)
        scheme = self.redirect_scheme
        if not scheme:
            return signed
        return scheme + signed.split("://", 1)[1] if scheme.endswith("://") else scheme

    @web.middleware
    async def _gcs_middleware(self, request: web.Request, handler) -> web.StreamResponse:
        self.gcs_requests.append((request.method, request.path_qs, request.headers.get("Range")))
        self.gcs_auth_headers.append(request.headers.get("Authorization"))
        return await handler(request)

    async def _gcs_handler(self, request: web.Request) -> web.StreamResponse:
        name = f"{request.match_info['bucket']}/{request.match_info['name']}"
        signature = request.query.get("X-Goog-Signature")
        if signature is None:
            return _gcs_error(403, "AccessDenied", "Anonymous caller does not have "
                              "storage.objects.get access.")
        if request.method != "GET":  # a V4 signature covers the verb it was made for
            return _gcs_error(403, "SignatureDoesNotMatch", "The request signature we "
                              "calculated does not match the signature you provided.")
        if not hmac.compare_digest(signature, self._signature(name, self._url_generation)):
            if any(hmac.compare_digest(signature, self._signature(name, g))
                   for g in range(self._url_generation)):
                return _gcs_error(400, "ExpiredToken", "Invalid argument.")
            return _gcs_error(403, "SignatureDoesNotMatch", "The request signature we "
                              "calculated does not match the signature you provided.")
        obj = self._objects.get(name)
        if obj is None:
            return _gcs_error(404, "NoSuchKey", "The specified key does not exist.")
        cut = self.cut_large_files and len(obj.data) >= self.large_file and \
            name not in self._cut_done
        if cut:
            self._cut_done.add(name)
        data = _flip_middle_byte(obj.data) if obj.corrupt else obj.data
        return await self._send(request, data, self._object_headers(obj), cut=cut)

    def _object_headers(self, obj: _Object) -> dict[str, str]:
        headers = {
            "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
            "ETag": f'"{base64.b64decode(obj.md5).hex()}"',
            "Last-Modified": datetime.fromtimestamp(obj.created, UTC).strftime(
                "%a, %d %b %Y %H:%M:%S GMT"),
            "x-goog-generation": str(int(obj.created * 1e6)), "x-goog-metageneration": "1",
            "x-goog-stored-content-encoding": "identity",
            "x-goog-stored-content-length": str(len(obj.data)), "x-goog-storage-class": "STANDARD",
        }
        if not self.no_hash:
            md5 = _b64(hashlib.md5(obj.data + b"\0").digest()) if obj.wrong_md5 else obj.md5
            headers["x-goog-hash"] = f"crc32c={obj.crc32c},md5={md5}"
        return headers

    async def _send(self, request: web.Request, data: bytes, headers: dict[str, str], *,
                    cut: bool) -> web.StreamResponse:
        """The bytes, or the requested range of them with 206; with `cut`, the connection is
        closed after half of them, as a dropped storage connection looks to a client."""
        try:
            span = byte_range(request.headers.get("Range"), len(data))
        except ValueError:
            return _gcs_error(416, "InvalidRange", "The requested range cannot be satisfied.")
        status, body = 200, data
        if span is not None:
            status, body = 206, data[span[0]:span[1]]
            headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{len(data)}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        view = memoryview(body)[: len(body) // 2 if cut else len(body)]
        for start in range(0, len(view), STREAM_CHUNK):
            # Each write waits for the socket to drain, so bytes_served counts what left, not
            # what a killed client never read.
            chunk = view[start : start + STREAM_CHUNK]
            await response.write(chunk)
            self.bytes_served += len(chunk)
            if self.send_rate:
                await asyncio.sleep(len(chunk) / self.send_rate)
        if cut:
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write_eof()
        return response
