"""What every upstream reached over HTTP shares: one session, the hub's manners (a request
budget, 429 and `Retry-After` waited out, 5xx and dead connections retried with backoff, a
bandwidth cap over every download), redirects followed by hand (to http and https only, our
credentials to the hub's own host only), and a refusal raised as the error the hub's contract
names. Hugging Face, ModelScope and Kaggle differ only in how they say no (`refusal`) and how
they authenticate (`credentials`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from urllib.parse import urljoin, urlsplit

import aiohttp

from peer.errors import Refused, RemoteError, RemoteRefused
from peer.http import plain_cause, raise_for_status, unreachable

from . import UpstreamBase, UpstreamError
from .polite import Bandwidth, RequestBudget, backoff, retry_after

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
MAX_REDIRECTS = 10
REDIRECTS = (301, 302, 303, 307, 308)


class HttpUpstream(UpstreamBase):
    #: where the token is set, named when the hub refuses it
    token_setting = "the upstream's token"

    def __init__(self, endpoint: str, *, token: str | None = None, name: str,
                 setting: str, requests_per_5min: int = 500, bandwidth: float | None = None,
                 connections_per_host: int = 8, timeout: float = 60.0, retries: int = 5):
        self.endpoint = endpoint.rstrip("/")
        self.name = name
        #: what a user changes to point the mirror elsewhere, named when it cannot be reached
        self.setting = setting
        self.token = token
        self.budget = RequestBudget(requests_per_5min)
        self.bandwidth = Bandwidth(bandwidth)
        self.retries = retries
        self._connections = connections_per_host
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._host = urlsplit(self.endpoint).netloc
        #: requests sent, for tests and logs
        self.requests = 0

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, auto_decompress=False,
                connector=aiohttp.TCPConnector(limit_per_host=self._connections),
                headers={"User-Agent": "weightswarm/0.1"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def credentials(self) -> dict[str, str]:
        """Headers that authenticate us to the hub (a bearer token by default)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _headers(self, url: str, extra: dict | None = None) -> dict:
        headers = dict(extra or {})
        # Credentials go to the hub's own host only, never to a CDN a redirect names.
        if urlsplit(url).netloc == self._host:
            headers.update(self.credentials())
        return headers

    async def refusal(self, response: aiohttp.ClientResponse) -> RemoteError:
        """The error a 4xx (or a 5xx past its retries) stands for; reads and releases it."""
        try:
            await raise_for_status(response, source=self.name)
        except RemoteError as e:
            return e
        return UpstreamError(f"{self.name}: HTTP {response.status}")

    def _refused_token(self, error: RemoteError) -> RemoteError:
        """A bare 401 or 403 (no more specific answer, such as a gated or missing repo) is
        about our credentials: say so in one line, naming where the token is set."""
        if error.http_status not in (401, 403) or not isinstance(error, Refused):
            return error
        if self.token:
            text = (f"{self.name} refused the token (HTTP {error.http_status}); "
                    f"check {self.token_setting}")
        else:
            text = (f"{self.name} asks for a token (HTTP {error.http_status}); "
                    f"set {self.token_setting}")
        fixed = RemoteRefused(message=text)
        fixed.url, fixed.http_status = error.url, error.http_status
        return fixed

    async def send(self, method: str, url: str, headers: dict | None = None, *,
                   json=None) -> aiohttp.ClientResponse:
        """One request with the upstream's manners: the budget first, then 429s waited out as
        asked, 5xx and network failures retried with backoff; a refusal raised as the error
        the hub names (`refusal`)."""
        attempt = 0
        while True:
            await self.budget.acquire()
            self.requests += 1
            try:
                response = await self._client().request(
                    method, url, headers=self._headers(url, headers), json=json,
                    allow_redirects=False)
            except (TimeoutError, aiohttp.ClientError) as e:
                if attempt >= self.retries:
                    raise unreachable(url, e, self.name, self.setting) from e
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                continue
            if response.status < 400:
                return response
            if response.status == 416:
                response.release()
                # Asked from an offset at or past the end: the file is shorter than listed.
                raise UpstreamError(f"{self.name}: {url}: HTTP 416, the file ends before "
                                    f"{(headers or {}).get('Range', 'the range asked')}")
            if (response.status == 429 or response.status >= 500) and attempt < self.retries:
                response.release()
                wait = retry_after(response.headers)
                if wait is None:
                    wait = backoff(attempt)
                log.info("%s answered %d; waiting %.1fs", self.name, response.status, wait)
                await asyncio.sleep(wait)
                attempt += 1
                continue
            raise self._refused_token(await self.refusal(response))

    async def follow(self, method: str, url: str, headers: dict | None = None, *, json=None,
                     on_redirect=None) -> aiohttp.ClientResponse:
        """`send`, following redirects to http(s) URLs only (a hub that sends us to `file:`
        or `ftp:` is refused); `on_redirect(response)` sees each redirect before it is taken."""
        for _ in range(MAX_REDIRECTS):
            response = await self.send(method, url, headers, json=json)
            if response.status not in REDIRECTS:
                return response
            location = response.headers.get("Location")
            try:
                if on_redirect is not None:
                    on_redirect(response)
            finally:
                response.release()
            if not location:
                raise UpstreamError(f"{self.name}: a redirect without Location at {url}")
            url = urljoin(url, location)
            if urlsplit(url).scheme not in ("http", "https"):
                raise UpstreamError(f"{self.name}: refused a redirect to a {urlsplit(url).scheme}:"
                                    f" URL (only http and https are followed)")
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, json = "GET", None  # as browsers and requests do
        raise UpstreamError(f"{self.name}: more than {MAX_REDIRECTS} redirects at {url}")

    async def json(self, method: str, url: str, *, json=None):
        """(body, headers) of a JSON answer, redirects followed."""
        response = await self.follow(method, url, json=json)
        try:
            return await response.json(content_type=None), response.headers
        except ValueError as e:
            raise UpstreamError(f"{self.name}: {url} answered something that is not JSON") from e
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamError(f"{self.name}: {url}: the answer broke off: "
                                f"{plain_cause(e)}") from e
        finally:
            response.release()

    async def stream(self, response: aiohttp.ClientResponse, offset: int, path: str
                     ) -> AsyncIterator[bytes]:
        """A download's bytes from `offset`, under the bandwidth cap; when the server ignored
        our `Range` (200 rather than 206), the bytes before `offset` are dropped. The chunks
        are the ones the connection delivered (up to asyncio's 256 KiB reads), uncopied:
        `iter_chunked` would join and slice them, a copy of every byte in the event loop."""
        try:
            skip = offset if (offset and response.status == 200) else 0
            async for chunk, _ in response.content.iter_chunks():
                if not chunk:
                    continue
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                    if not chunk:
                        continue
                await self.bandwidth.consume(len(chunk))
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamError(f"{self.name}: {path}: the transfer broke off: "
                                f"{plain_cause(e)}") from e
        finally:
            response.release()
