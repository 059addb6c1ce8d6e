"""peer/steering.py: the pulls of a swarm split the pieces only the mirrors hold, each asking
the mirrors for its own share and the other peers for everything they hold. Pure: views and
clocks in, priorities out."""

from __future__ import annotations

from peer.steering import NORMAL, SKIP, TOP, PeerView, Steering, piece_set, share_out

PIECE = 4 * 1024 * 1024
RATE = 2 * 1024 * 1024  # from the mirrors: a piece-time of 2 s
A, B, C = (b"-WP0100-" + bytes(c) * 12 for c in b"abc")


def holding(*indices: int, n: int = 16) -> int:
    return piece_set([i in indices for i in range(n)])


MIRROR = PeerView(b"-WM0100-" + bytes(12), far=True, seed=True, pieces=holding(*range(16)))


def pull(pid: bytes, pieces: int = 0) -> PeerView:
    return PeerView(pid, far=False, seed=False, pieces=pieces)


def of(priorities: list[int], level: int) -> list[int]:
    return [i for i, p in enumerate(priorities) if p == level]


def test_three_pulls_with_one_view_ask_the_mirror_for_disjoint_equal_shares_covering_all():
    shares = []
    for me in (A, B, C):
        others = [pull(p) for p in (A, B, C) if p != me]
        out = Steering(me, 16, PIECE).decide(0.0, 0, [MIRROR, *others], 0, RATE)
        assert set(of(out, TOP)) | set(of(out, SKIP)) == set(range(16))
        shares.append(set(of(out, TOP)))
    assert set().union(*shares) == set(range(16))
    assert sum(map(len, shares)) == 16, "a piece owned twice would come from the mirror twice"
    assert sorted(map(len, shares)) == [5, 5, 6]


def test_a_piece_another_peer_holds_comes_from_it_and_what_this_pull_has_is_left_alone():
    out = Steering(A, 16, PIECE).decide(0.0, holding(0), [MIRROR, pull(B, holding(5, 7)),
                                                          pull(C)], 0, RATE)
    assert out[5] == out[7] == NORMAL
    assert out[0] == NORMAL  # had: libtorrent skips it whatever its priority
    mine = share_out([A, B, C], A, [i for i in range(16) if i not in (0, 5, 7)])
    assert of(out, TOP) == mine
    assert set(of(out, SKIP)) == set(range(16)) - {0, 5, 7} - set(mine)


def test_the_mirrors_pieces_are_not_held_and_foreign_clients_and_seeds_own_nothing():
    foreign = PeerView(b"-qB4650-" + bytes(12), far=False, seed=False, pieces=0)
    seed = PeerView(b"-WP0100-" + b"s" * 12, far=False, seed=True, pieces=0)
    web_seed = PeerView(bytes(20), far=True, seed=True, pieces=holding(*range(16)))
    alone = Steering(A, 16, PIECE).decide(0.0, 0, [MIRROR, web_seed, foreign], 0, RATE)
    assert of(alone, TOP) == list(range(16)), "a lone pull owns every piece"
    with_seed = Steering(A, 16, PIECE).decide(0.0, 0, [MIRROR, seed], 0, RATE)
    assert with_seed == [NORMAL] * 16, "a seed peer holds every piece: all from it"


def test_a_pull_that_stops_growing_is_no_longer_an_owner_and_its_share_passes_on():
    steering = Steering(A, 16, PIECE)
    b_pieces: set[int] = set()
    out = []
    for second in range(40):
        if second < 5:
            b_pieces.add(second * 2 + 1)  # B fetches its share, then goes quiet
        out = steering.decide(float(second), 0, [MIRROR, pull(B, holding(*b_pieces))],
                              second + 1, RATE)
        if second == 5:
            assert len(of(out, TOP)) == 8 and len(of(out, SKIP)) == 3
    assert of(out, SKIP) == [], "B stalled ten piece-times ago: A fetches its pieces too"
    assert len(of(out, TOP)) == 11
    assert steering.stalled == {B}


def test_a_pull_that_receives_nothing_for_a_while_asks_everyone_for_everything_until_bytes_come():
    steering = Steering(A, 16, PIECE)
    peers = [MIRROR, pull(B), pull(C)]
    assert of(steering.decide(0.0, 0, peers, 100, RATE), SKIP)
    assert not steering.relaxed
    # about 2 piece-times (4 s at 2 MiB/s, the peak rate decaying) with nothing: the split
    # is dropped
    assert of(steering.decide(3.0, 0, peers, 100, 0), SKIP)
    assert steering.decide(6.0, 0, peers, 100, 0) == [NORMAL] * 16
    assert steering.relaxed
    assert of(steering.decide(6.5, 0, peers, 200, RATE), SKIP)
    assert not steering.relaxed


def test_an_idle_mirror_connection_does_not_stretch_the_wait():
    """libtorrent's rate of an idle connection decays to nothing: the piece-time follows the
    peak rate, so a pull waiting for a frozen neighbour relaxes within seconds, not minutes."""
    steering = Steering(A, 16, PIECE)
    peers = [MIRROR, pull(B), pull(C)]
    steering.decide(0.0, 0, peers, 100, RATE)
    for tick in range(1, 30):
        steering.decide(tick * 0.2, 0, peers, 100, RATE / 10 ** tick)
    assert steering.decide(6.0, 0, peers, 100, 1.0) == [NORMAL] * 16


def test_a_pull_joining_takes_an_equal_share_of_what_is_left():
    missing = list(range(64))
    two = [share_out([A, B], p, missing) for p in (A, B)]
    three = [share_out([A, B, C], p, missing) for p in (A, B, C)]
    assert sorted(map(len, two)) == [32, 32]
    assert sorted(map(len, three)) == [21, 21, 22]
    assert sorted(sum(three, [])) == missing


def test_a_piece_set_joins_counts_and_reads_back_libtorrents_bitfields():
    assert piece_set([]) == 0
    a, b = piece_set([True, False, True]), piece_set([False, True, False])
    assert (a | b).bit_count() == 3 and a.bit_count() == 2
    assert (a | b).to_bytes(3, "little") == b"\x01\x01\x01"
    assert piece_set([False] * 70 + [True]).to_bytes(71, "little")[70] == 1


# -- far sources (issue 16): mirrors and other sites' peers, shared out by this site's pulls ------


def test_a_far_pulls_pieces_are_shared_out_and_it_owns_nothing():
    other_site = PeerView(C, far=True, seed=False, pieces=holding(0, 1, 2, 3))
    out = Steering(A, 16, PIECE).decide(0.0, 0, [MIRROR, other_site, pull(B)], 0, RATE)
    # Pieces 0-3 are held only far away: shared out between A and B like the mirror's.
    assert of(out, TOP) == share_out([A, B], A, list(range(16)))
    assert of(out, NORMAL) == []


def test_a_pull_with_nothing_of_its_own_left_needs_nothing_far_until_its_share_grows():
    steering = Steering(A, 16, PIECE)
    mine = share_out([A, B], A, list(range(16)))
    theirs = [i for i in range(16) if i not in mine]
    steering.decide(0.0, 0, [MIRROR, pull(B)], 0, RATE)
    assert steering.needs_far
    # A has its share; B holds some of its own: what is left is B's, from the far sources.
    steering.decide(1.0, holding(*mine), [MIRROR, pull(B, holding(*theirs[:3]))], 100, RATE)
    assert not steering.needs_far
    # B makes no progress for long: its share passes to A, which needs the mirror again.
    steering.decide(60.0, holding(*mine), [MIRROR, pull(B, holding(*theirs[:3]))], 200, RATE)
    assert steering.stalled == {B}
    assert steering.needs_far


def test_a_relaxed_pull_needs_the_far_sources():
    steering = Steering(A, 16, PIECE)
    mine = share_out([A, B], A, list(range(16)))
    steering.decide(0.0, holding(*mine), [MIRROR, pull(B)], 100, RATE)
    assert not steering.needs_far
    steering.decide(5.0, holding(*mine), [MIRROR, pull(B)], 100, RATE)
    assert steering.relaxed and steering.needs_far


def test_while_this_pull_receives_nothing_the_others_are_not_taken_for_stalled():
    """A cut uplink stops every pull of a site at once: none may take the others for
    stalled meanwhile, or each owns everything once the link is back."""
    steering = Steering(A, 16, PIECE, closes_far=True)
    steering.decide(0.0, 0, [MIRROR, pull(B)], 100, RATE)
    for t in range(1, 60):  # a minute of nothing, for everyone
        steering.decide(float(t), 0, [MIRROR, pull(B)], 100, RATE)
    assert steering.stalled == set()
    # This pull receives again, B does not: B's clock runs from here.
    steering.decide(61.0, 0, [MIRROR, pull(B)], 200, RATE)
    assert steering.stalled == set()
    for t in range(62, 80):
        steering.decide(float(t), 0, [MIRROR, pull(B)], 100 * t, RATE)
    assert steering.stalled == {B}
