"""peer/http.py: one error contract, both ways. What our services answer for an error, the
clients turn back into the same class; what a hub answers is read the way huggingface_hub
reads it (X-Error-Code first, then the status)."""

import contextlib
import logging

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from peer.errors import (
    BadRequest,
    BlobMissing,
    EntryNotFound,
    GatedRepo,
    NotFound,
    RangeNotSatisfiable,
    RateLimited,
    Refused,
    RemoteError,
    RepoNotFound,
    RevisionNotFound,
    Unavailable,
)
from peer.http import error_from, error_message, errors_middleware, raise_for_status

URL = "http://hub.test/api/models/org/name"


@pytest.mark.parametrize("status,code,kind", [
    (404, "RepoNotFound", RepoNotFound),
    (401, "RepoNotFound", RepoNotFound),  # HF answers a private repo so
    (404, "RevisionNotFound", RevisionNotFound),
    (404, "EntryNotFound", EntryNotFound),
    (403, "GatedRepo", GatedRepo),
    (401, "GatedRepo", GatedRepo),
    (400, None, BadRequest),
    (401, None, Refused),
    (403, None, Refused),
    (404, None, NotFound),
    (416, None, RangeNotSatisfiable),
    (429, None, RateLimited),
    (500, None, Unavailable),
    (502, None, Unavailable),
    (503, None, Unavailable),
    (418, None, Unavailable),
    (500, "SomethingNew", Unavailable),
])
def test_an_answer_is_the_error_its_code_then_its_status_names(status, code, kind):
    headers = CIMultiDict({"X-Error-Code": code} if code else {})
    error = error_from(status, headers, "", URL, source="hub")
    assert isinstance(error, kind), f"{status} {code}: {type(error).__name__}, not {kind}"
    assert isinstance(error, RemoteError), "and it says another server answered"
    assert (error.url, error.http_status) == (URL, status)
    assert str(error).startswith("hub: ")


def test_a_plain_404_is_not_a_repo_or_entry_not_found():
    error = error_from(404, {}, "", URL)
    assert not isinstance(error, (RepoNotFound, RevisionNotFound, EntryNotFound))


def test_entry_not_found_keeps_the_commit_it_was_looked_up_at():
    error = error_from(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": "c" * 40},
                       "", URL)
    assert isinstance(error, EntryNotFound) and error.commit == "c" * 40


@pytest.mark.parametrize("headers,body,message", [
    ({"X-Error-Message": "from the header"}, '{"error": "from the body"}', "from the header"),
    ({}, '{"error": "from the body"}', "from the body"),
    ({}, '{"error": ["one", "two"]}', "one; two"),
    ({}, '{"errors": [{"message": "a"}, {"message": "b"}]}', "a; b"),
    ({}, "plain text\n", "plain text"),
    ({}, "x" * 1000, "x" * 300),
])
def test_the_message_is_the_servers_own_words(headers, body, message):
    assert error_message(headers, body) == message


@contextlib.asynccontextmanager
async def serving(error: Exception):
    """A real server on 127.0.0.1:0 whose one route raises `error`; yields its URL."""
    async def handler(request):
        raise error

    app = web.Application(middlewares=[errors_middleware])
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("error,kind", [
    (RepoNotFound("org/name"), RepoNotFound),
    (RevisionNotFound("org/name", "v9"), RevisionNotFound),
    (EntryNotFound("org/name", "c" * 40, "a.txt"), EntryNotFound),
    (GatedRepo("org/name"), GatedRepo),
    (BadRequest("hostile"), BadRequest),
    (NotFound("no such blob here"), NotFound),
    (Refused("archive"), Refused),
    (BlobMissing("a" * 64), Unavailable),  # 503: ours to mend, never a "not found"
])
async def test_what_our_service_answers_our_client_reads_back_as_the_same_error(error, kind):
    async with serving(error) as url, aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            assert response.headers.get("X-Error-Message") == str(error)
            assert (await response.json())["error"] == str(error)
            with pytest.raises(kind) as raised:
                await raise_for_status(response)
    assert raised.value.http_status == error.status
    if isinstance(error, EntryNotFound):
        assert raised.value.commit == error.commit, "X-Repo-Commit travels too"


async def test_an_unexpected_failure_is_a_500_with_a_request_id_and_its_traceback_only_logged(
        caplog):
    with caplog.at_level(logging.ERROR, logger="peer.http"):
        async with serving(RuntimeError("secret detail")) as url, aiohttp.ClientSession() as http:
            async with http.get(url) as response:
                body = await response.text()
                status = response.status
    assert status == 500
    assert "secret detail" not in body and "Traceback" not in body
    assert "internal error (request " in body
    request_id = body.split("request ")[1].split(")")[0]
    assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records), \
        "the traceback is in the log, under the request id the client was given"
