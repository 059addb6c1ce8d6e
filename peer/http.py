"""One HTTP error contract, both ways (PROTOCOLS.md section 1.2).

Serving: every service of ours that answers HTTP (the mirror, the peer daemon) turns a project
error into the Hugging Face answer: its status, `X-Error-Code` where the error has one,
`X-Error-Message`, and a JSON body `{"error": ...}`. An unexpected exception is a 500 naming a
request id; its traceback goes only to the log, under that id.

Asking: every client of ours (a pull asking mirrors, a sync asking an upstream) turns an error
answer back into the same classes with `raise_for_status`, keyed on `X-Error-Code` first and
the status second, as `huggingface_hub`'s `hf_raise_for_status` does. So a 404 `RepoNotFound`
and a 404 `EntryNotFound` mean the same thing wherever they come from.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from .errors import (
    EntryNotFound,
    RateLimited,
    RemoteBadRequest,
    RemoteEntryNotFound,
    RemoteError,
    RemoteGatedRepo,
    RemoteNotFound,
    RemoteRangeNotSatisfiable,
    RemoteRefused,
    RemoteRepoNotFound,
    RemoteRevisionNotFound,
    Unavailable,
    WeightswarmError,
)

log = logging.getLogger(__name__)

#: `X-Error-Code` → what it means, wherever it comes from
BY_CODE: dict[str, type[RemoteError]] = {
    "RepoNotFound": RemoteRepoNotFound,
    "RevisionNotFound": RemoteRevisionNotFound,
    "EntryNotFound": RemoteEntryNotFound,
    "GatedRepo": RemoteGatedRepo,
}
#: the status, for an answer without a code (anything else of 400 and more is Unavailable)
BY_STATUS: dict[int, type[RemoteError]] = {
    400: RemoteBadRequest, 401: RemoteRefused, 403: RemoteRefused, 404: RemoteNotFound,
    416: RemoteRangeNotSatisfiable, 429: RateLimited,
}
#: the most of an error body read for its message
MAX_ERROR_BODY = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def header_safe(text: str) -> str:
    """Text fit for a header value: ASCII, one line, bounded."""
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\n", " ")[:1000]


# -- serving ------------------------------------------------------------------------------------


def error_response(error: WeightswarmError) -> web.Response:
    headers = {"X-Error-Message": header_safe(str(error))}
    if error.error_code:
        headers["X-Error-Code"] = error.error_code
    if isinstance(error, EntryNotFound) and error.commit:
        headers["X-Repo-Commit"] = error.commit
    return web.json_response({"error": str(error)}, status=error.status, headers=headers)


async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`handler`'s answer, with every error turned into the contract's answer. A client gone
    (cancelled, reset) is re-raised: there is nobody to answer."""
    try:
        return await handler(request)
    except WeightswarmError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return web.json_response({"error": e.reason}, status=e.status,
                                 headers={"X-Error-Message": header_safe(e.reason)})
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        request_id = secrets.token_hex(6)
        log.exception("request %s failed: %s %s", request_id, request.method,
                      header_safe(request.raw_path))
        text = f"internal error (request {request_id})"
        return web.json_response({"error": text}, status=500, headers={"X-Error-Message": text})


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await answer_errors(request, handler)


# -- asking -------------------------------------------------------------------------------------


def error_message(headers: Mapping[str, str], body: str) -> str:
    """The server's own words: `X-Error-Message`, else the JSON body's `error` (text, a list,
    or an object's `message`), `message` or `errors[].message`, else the start of the body."""
    if headers.get("X-Error-Message"):
        return headers["X-Error-Message"]
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):  # Google's APIs (Kaggle): {"error": {"code", "message"}}
            error = error.get("message")
        if not error and isinstance(data.get("message"), str):  # Kaggle: {"code", "message"}
            error = data["message"]
        if isinstance(error, list):
            error = "; ".join(str(e) for e in error)
        if isinstance(error, str) and error:
            return error
        errors = data.get("errors")
        if isinstance(errors, list):
            found = [str(e.get("message")) for e in errors if isinstance(e, dict)]
            if found:
                return "; ".join(found)
    return body.strip()[:300]


def error_from(status: int, headers: Mapping[str, str], body: str, url: str,
               source: str = "") -> RemoteError:
    """The error an answer of `status` (400 or more) stands for."""
    code = headers.get("X-Error-Code")
    cls = BY_CODE.get(code or "") or BY_STATUS.get(status) or Unavailable
    message = error_message(headers, body) or f"HTTP {status}"
    text = f"{source or url}: {message} (HTTP {status}{', ' + code if code else ''})"
    if cls is RemoteEntryNotFound:
        error: RemoteError = RemoteEntryNotFound(commit=headers.get("X-Repo-Commit", ""),
                                                 message=text)
    else:
        error = cls(message=text)
    error.url, error.http_status = url, status
    return error


async def raise_for_status(response: aiohttp.ClientResponse, *, source: str = "") -> None:
    """Nothing for an answer under 400; else its error, raised (the body is read, bounded,
    and the response released)."""
    if response.status < 400:
        return
    try:
        body = (await response.content.read(MAX_ERROR_BODY)).decode("utf-8", "replace")
    except (aiohttp.ClientError, TimeoutError):
        body = ""
    finally:
        response.release()
    raise error_from(response.status, response.headers, body, str(response.url), source)


#: what went wrong with a connection, in words, by aiohttp's class (the most specific first)
_CAUSES: tuple[tuple[type[BaseException], str], ...] = (
    (aiohttp.ClientConnectorDNSError, "its name does not resolve (DNS)"),
    (aiohttp.ClientConnectorCertificateError, "its TLS certificate is not trusted"),
    (aiohttp.ClientSSLError, "the TLS handshake failed"),
    (aiohttp.ServerTimeoutError, "it did not answer in time (timed out)"),
    (aiohttp.ServerDisconnectedError, "it closed the connection without an answer"),
    (aiohttp.ClientPayloadError, "the transfer was cut off"),
    (TimeoutError, "it did not answer in time (timed out)"),
    (ConnectionRefusedError, "the connection was refused (nothing listens there)"),
    (ConnectionResetError, "the connection was reset"),
    (aiohttp.InvalidURL, "the URL is not valid"),
)
#: the same for an OSError's errno, when aiohttp wraps one
_ERRNO_CAUSES = {
    errno.ECONNREFUSED: "the connection was refused (nothing listens there)",
    errno.ENETUNREACH: "there is no route to its network",
    errno.EHOSTUNREACH: "there is no route to the host",
    errno.ETIMEDOUT: "it did not answer in time (timed out)",
    errno.ECONNRESET: "the connection was reset",
}


def plain_cause(error: BaseException) -> str:
    """Why a request got no answer, in a few plain words (DNS, refused, timed out, TLS...)."""
    for kind, words in _CAUSES:
        if isinstance(error, kind):
            return words
    os_error = getattr(error, "os_error", error)
    if isinstance(os_error, OSError) and os_error.errno in _ERRNO_CAUSES:
        return _ERRNO_CAUSES[os_error.errno]
    text = " ".join(str(error).split())[:200]
    return f"{type(error).__name__}{': ' + text if text else ''}"


def unreachable(url: str, error: BaseException, source: str = "",
                setting: str = "") -> Unavailable:
    """A request that got no answer (refused, reset, timed out), as the contract's error: one
    line naming the host, the cause in plain words, and the setting that changes where it
    goes."""
    host = urlsplit(url).netloc or url
    check = f"; check {setting}" if setting else ""
    failure = Unavailable(f"{source + ': ' if source else ''}could not reach {host}: "
                          f"{plain_cause(error)}{check}")
    failure.url = url
    return failure
