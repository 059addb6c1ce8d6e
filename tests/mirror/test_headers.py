"""The headers the mirror parses by hand take exactly their RFC 9110 grammar, ASCII only:
`Range`, `If-None-Match`, `If-Range` (mirror/serving.py), and the numbers of query strings and
upstream headers (peer.paths.ascii_digits). A property test holds `parse_range` to the grammar;
the regression tests are what outside testing broke (issue 14: `bytes=¹-2` answered 500)."""

import http.client
import logging
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from helpers import make_config, make_tiny_model
from mirror.importer import Importer
from mirror.serving import entity_tags, etag_matches, if_range_holds, parse_range
from mirror.upstreams.polite import retry_after
from peer.errors import RangeNotSatisfiable
from peer.paths import ascii_digits

#: digits that str.isdigit takes and HTTP does not
NOT_ASCII_DIGITS = "¹²³٣۴߅०১੩૪୫௬౭೮൯๐໑༢၃႔០᠑᥆᧐᪀᭐᮰᱀᱐꘠꣐꤀꧐꩐꯰０"


def expected(header: str, size: int):
    """RFC 9110 section 14.1.1, read from its grammar for one `bytes` range: the slice of
    the content it names, None for "the whole file", or "416"."""
    unit, equals, spec = header.partition("=")
    if not equals or unit.lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.partition("-")
    digits = set("0123456789")
    if not dash or not set(first + last) <= digits or not (first or last) or \
            len(first) > 19 or len(last) > 19:
        return "416"
    if not first:  # suffix-range
        n = int(last)
        return range(max(0, size - n), size) if n and size else "416"
    a = int(first)
    if a >= size or (last and int(last) < a):
        return "416"
    return range(a, min(int(last), size - 1) + 1 if last else size)


def answer(header: str, size: int):
    try:
        got = parse_range(header, size)
    except RangeNotSatisfiable:
        return "416"
    return None if got is None else range(got.start, got.end + 1)


ranges = st.one_of(
    st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(0, 2000), st.integers(0, 2000)),
    st.builds(lambda a: f"bytes={a}-", st.integers(0, 2000)),
    st.builds(lambda n: f"bytes=-{n}", st.integers(0, 2000)),
    st.text(alphabet="bytesBYTES=-,0123456789 \t" + NOT_ASCII_DIGITS[:6], max_size=24),
)


@given(header=ranges, size=st.integers(0, 1500))
@example(header="bytes=¹-2", size=10)
@example(header="bytes=0-١", size=10)
@example(header="bytes= 0-1", size=10)
@example(header="bytes=-0", size=10)
@example(header="BYTES=0-1", size=10)
@example(header="bytes=0-1,2-3", size=10)
@example(header="items=0-1", size=10)
@settings(max_examples=2000, deadline=None)
def test_parse_range_takes_exactly_the_rfc_grammar(header, size):
    assert answer(header, size) == expected(header, size), header


@given(header=st.builds(lambda d, s: f"bytes={d}-{s}",
                        st.sampled_from(list(NOT_ASCII_DIGITS)), st.sampled_from(["", "5"])))
def test_no_digit_but_ascii_makes_a_range(header):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_entity_tags_take_the_list_grammar_and_nothing_else():
    e = "a" * 64
    assert entity_tags(f'"{e}"') == [e]
    assert entity_tags(f' W/"{e}" ,, "x" ') == [e, "x"]
    assert entity_tags("*") == ["*"]
    assert entity_tags(e) is None, "an unquoted tag is not an entity-tag"
    assert entity_tags('"a"b"') is None and entity_tags('"a') is None
    assert etag_matches(f'W/"{e}"', e), "If-None-Match compares weakly"
    assert not etag_matches(e, e) and not etag_matches('"¹"', "1")
    assert if_range_holds(f'"{e}"', e) and not if_range_holds(f'W/"{e}"', e), \
        "If-Range compares strongly"
    assert not if_range_holds("Tue, 01 Dec 2026 10:00:00 GMT", e)


@pytest.mark.parametrize("text,value", [
    ("0", 0), ("12", 12), ("9" * 19, int("9" * 19)),
    ("", None), (" 1", None), ("1 ", None), ("+1", None), ("-1", None), ("1.0", None),
    ("¹", None), ("٣", None), ("０", None), ("9" * 20, None), (None, None),
])
def test_ascii_digits_take_1_star_digit_only(text, value):
    assert ascii_digits(text) == value


@pytest.mark.parametrize("headers,wait", [
    ({"Retry-After": "¹"}, None),
    ({"Retry-After": "3"}, 3.0),
    ({"RateLimit": '"api";r=0;t=٣'}, None),
    ({"RateLimit": '"api";r=0;t=7'}, 7.0),
    ({"RateLimit-Reset": "²"}, None),
])
def test_an_upstreams_non_ascii_wait_is_no_wait_not_a_crash(headers, wait):
    assert retry_after(headers, now=0) == wait


@pytest.fixture
def mirror_with_a_model(tmp_path, serve, catalog, store):
    Importer(catalog, store).import_path(make_tiny_model(tmp_path / "m"), repo_id="org/m")
    return serve(make_config(tmp_path / "home"))


def test_a_range_with_a_non_ascii_digit_is_a_416_not_a_500_and_no_traceback(
        mirror_with_a_model, caplog):
    mirror = mirror_with_a_model
    conn = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=10)
    with caplog.at_level(logging.INFO):
        for header in ("bytes=¹-2", "bytes=0-٣", "bytes=-１"):
            conn.putrequest("GET", "/org/m/resolve/main/config.json")
            conn.putheader("Range", header.encode("utf-8"))
            conn.endheaders()
            response = conn.getresponse()
            response.read()
            if response.status == 307:  # the branch: follow to the commit-pinned URL
                conn.putrequest("GET", response.getheader("Location").split(str(mirror.port), 1)[1])
                conn.putheader("Range", header.encode("utf-8"))
                conn.endheaders()
                response = conn.getresponse()
                response.read()
            assert response.status == 416, (header, response.status)
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"


@pytest.mark.parametrize("query", ["cursor=¹", "limit=٣", "cursor=-1", "limit=1e3"])
def test_a_listing_query_number_outside_1_star_digit_is_a_400(mirror_with_a_model, query):
    conn = http.client.HTTPConnection("127.0.0.1", mirror_with_a_model.port, timeout=10)
    path = "/api/models/org/m/tree/main" if query.startswith("cursor") else "/api/models"
    name, _, value = query.partition("=")
    conn.request("GET", f"{path}?{name}={quote(value)}")  # the server decodes it back
    response = conn.getresponse()
    response.read()
    assert response.status == 400, (query, response.status)
