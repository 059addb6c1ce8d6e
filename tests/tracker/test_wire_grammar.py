"""The tracker's parsers against their grammars (issue 14), as properties: every announce and
scrape the grammar allows parses to exactly what it says, whatever its percent-encoding and
parameter order; anything else is a TrackerRefused, never another exception; numbers are
ASCII digits only. HTTP: BEP 3, 23, 48 over RFC 3986 queries; UDP: BEP 15."""

from __future__ import annotations

import re
import socket
import struct
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from tracker.app import Tracker, UdpTracker
from tracker.config import TrackerConfig
from tracker.swarm import Refusal, TrackerRefused
from tracker.wire import (
    MAX_SCRAPE_HASHES,
    PROTOCOL_ID,
    Announce,
    UdpRequest,
    parse_announce,
    parse_scrape,
    parse_udp,
    parse_udp_announce,
    parse_udp_scrape,
)

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
NUMBER = st.integers(0, 2**63 - 1)
HTTP_EVENTS = {"started": "started", "completed": "completed", "stopped": "stopped",
               "paused": "", "": ""}


@st.composite
def encoded(draw, data: bytes) -> str:
    """`data` percent-encoded as a client may: an unreserved byte raw or escaped, escapes in
    either case."""
    out = []
    for b in data:
        if b in UNRESERVED and draw(st.booleans()):
            out.append(chr(b))
        else:
            out.append(("%%%02X" if draw(st.booleans()) else "%%%02x") % b)
    return "".join(out)


@st.composite
def announces(draw) -> tuple[str, Announce]:
    info_hash, peer_id = draw(st.binary(min_size=20, max_size=20)), draw(
        st.binary(min_size=20, max_size=20))
    port = draw(st.integers(1, 65535))
    uploaded, downloaded, left = draw(NUMBER), draw(NUMBER), draw(NUMBER)
    event = draw(st.sampled_from(sorted(HTTP_EVENTS)))
    numwant = draw(st.one_of(st.none(), st.just(-1), st.integers(0, 10**30),
                             st.sampled_from([2**63, 10**20 - 1, 10**20])))
    compact = draw(st.sampled_from([None, "0", "1"]))
    no_peer_id = draw(st.sampled_from([None, "0", "1"]))
    key = draw(st.one_of(st.none(), st.binary(max_size=16)))
    params = [f"info_hash={draw(encoded(info_hash))}", f"peer_id={draw(encoded(peer_id))}",
              f"port={port}", f"uploaded={uploaded}", f"downloaded={downloaded}",
              f"left={left}"]
    params += [f"event={event}"] if event or draw(st.booleans()) else []
    params += [] if numwant is None else [f"numwant={numwant}"]
    params += [] if compact is None else [f"compact={compact}"]
    params += [] if no_peer_id is None else [f"no_peer_id={no_peer_id}"]
    params += [] if key is None else [f"key={draw(encoded(key))}"]
    params += [f"{name}={draw(encoded(value))}" for name, value in draw(st.lists(st.tuples(
        st.sampled_from(["supportcrypto", "corrupt", "redundant", "trackerid", "x"]),
        st.binary(max_size=8)), max_size=3))]
    query = "&".join(draw(st.permutations(params)))
    if numwant is not None and numwant >= 10**20:
        numwant = 2**63 - 1  # more digits than any number holds: as large as one gets
    expected = Announce(info_hash, peer_id, port, uploaded, downloaded, left,
                        HTTP_EVENTS[event], None if numwant in (None, -1) else numwant,
                        compact != "0", no_peer_id == "1", "192.0.2.7", key)
    return query, expected


@given(announces())
def test_every_announce_of_the_grammar_parses_to_what_it_says(case):
    query, expected = case
    assert parse_announce(query, "192.0.2.7", ip_trusted=False) == expected


@given(st.text(max_size=30).filter(lambda v: not re.fullmatch(r"[0-9]{1,20}", v)))
def test_a_number_is_ascii_digits_and_nothing_else(value):
    query = f"info_hash={'a' * 20}&peer_id={'b' * 20}&port=1&left={quote(value, safe='')}"
    try:
        parse_announce(query, "192.0.2.7", ip_trusted=False)
    except TrackerRefused as e:
        assert e.reason is Refusal.MALFORMED and "left" in str(e)
    else:
        raise AssertionError(f"left={value!r} was taken for a number")


@given(st.text(max_size=300))
def test_any_query_string_parses_or_is_refused(query):
    for parse in (lambda q: parse_announce(q, "192.0.2.7", ip_trusted=True), parse_scrape):
        try:
            parse(query)
        except TrackerRefused as e:
            assert e.reason in Refusal


@given(st.lists(st.binary(min_size=20, max_size=20), max_size=MAX_SCRAPE_HASHES + 10),
       st.data())
def test_a_scrape_names_its_hashes_and_is_bounded(hashes, data):
    query = "&".join(f"info_hash={data.draw(encoded(h))}" for h in hashes)
    if len(hashes) <= MAX_SCRAPE_HASHES:
        assert parse_scrape(query) == hashes
    else:
        try:
            parse_scrape(query)
        except TrackerRefused as e:
            assert e.reason is Refusal.TOO_LARGE
        else:
            raise AssertionError("too many hashes were taken")


# -- UDP (BEP 15) -------------------------------------------------------------------------------


@given(st.binary(min_size=20, max_size=20), st.binary(min_size=20, max_size=20),
       NUMBER, NUMBER, NUMBER, st.integers(0, 3), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.integers(-(2**31), 2**31 - 1), st.integers(1, 65535),
       st.binary(max_size=40))
def test_every_udp_announce_parses_to_what_it_says(info_hash, peer_id, downloaded, left,
                                                    uploaded, event, ip, key, numwant, port,
                                                    options):
    packet = struct.pack(">QII20s20sQQQIIIiH", 1234, 1, 99, info_hash, peer_id, downloaded,
                         left, uploaded, event, ip, key, numwant, port) + options
    req = parse_udp(packet)
    assert (req.action, req.connection_id, req.transaction_id) == (1, 1234, 99)
    a = parse_udp_announce(req, "192.0.2.7")
    assert a == Announce(info_hash, peer_id, port, uploaded, downloaded, left,
                         ["", "completed", "started", "stopped"][event],
                         None if numwant < 0 else numwant, True, True, "192.0.2.7",
                         key.to_bytes(4, "big"))


@given(st.integers(0, MAX_SCRAPE_HASHES + 5), st.integers(0, 19))
def test_a_udp_scrape_is_whole_hashes_at_least_one_and_bounded(count, extra):
    payload = bytes(range(20)) * count + b"x" * extra
    try:
        hashes = parse_udp_scrape(UdpRequest(2, 1, 1, payload))
    except TrackerRefused as e:
        assert count == 0 or extra or count > MAX_SCRAPE_HASHES
        assert e.reason is (Refusal.TOO_LARGE if count > MAX_SCRAPE_HASHES and not extra
                            else Refusal.MALFORMED)
    else:
        assert 1 <= count <= MAX_SCRAPE_HASHES and not extra and len(hashes) == count


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_refused(packet):
    req = parse_udp(packet)
    assert (req is None) == (len(packet) < 16)
    if req is None:
        return
    for parse in (lambda r: parse_udp_announce(r, "192.0.2.7"), parse_udp_scrape):
        try:
            parse(req)
        except TrackerRefused as e:
            assert e.reason in Refusal


UDP_TRACKER = UdpTracker(Tracker(TrackerConfig()), socket.socket(socket.AF_INET,
                                                                  socket.SOCK_DGRAM))
ADDR = ("192.0.2.7", 4000)


@st.composite
def mutated_packets(draw) -> bytes:
    """A request whose first 16 bytes are those of a real client (a valid connection id, or
    the connect's protocol id), the rest anything."""
    connection = UDP_TRACKER.tracker.connection_id(ADDR, 0)
    action = draw(st.one_of(st.integers(0, 3), st.integers(0, 2**32 - 1)))
    head = struct.pack(">QII", PROTOCOL_ID if action == 0 else connection, action,
                       draw(st.integers(0, 2**32 - 1)))
    return head + draw(st.binary(max_size=120))


@given(st.one_of(st.binary(max_size=200), mutated_packets()))
def test_the_udp_tracker_answers_anything_with_an_answer_or_an_error(packet):
    answer = UDP_TRACKER.answer(packet, ADDR, 30.0)
    if len(packet) < 16:
        assert answer is None
        return
    action, transaction = struct.unpack_from(">II", answer)
    assert transaction == struct.unpack_from(">I", packet, 12)[0]
    assert action in (0, 1, 2, 3)
