"""The access file and the one decision (issue 20, items 1 and 2), as plain functions: who may
read a public, gated or private repo with which token, and every flaw of a hostile access file
refused at load with what is wrong."""

from __future__ import annotations

import base64
import time

import pytest

from mirror.access import (
    NONE,
    AccessFile,
    Rules,
    bearer,
    decide,
    load,
    new_token,
    parse,
    token_sha256,
)
from peer.errors import ConfigError

NOW = 1_800_000_000.0


def rules_with(token: str, **entry) -> Rules:
    return parse({
        "groups": {"research": {"read": ["org/*"]}},
        "users": {"alice": {"groups": ["research"]}, "bob": {}},
        "tokens": [{"user": "alice", "sha256": token_sha256(token), **entry}],
    })


def test_a_token_reads_what_its_groups_and_globs_give():
    token = new_token()
    rules = rules_with(token, read=["team/tune-*"])
    alice = rules.token(token, NOW)
    assert alice is not None and alice.user == "alice"
    assert rules.may_read(alice, "org/model") and rules.may_read(alice, "team/tune-1")
    assert not rules.may_read(alice, "team/other")
    assert not rules.may_read(None, "org/model")


def test_the_decision_follows_the_hf_contract():
    token = new_token()
    rules = rules_with(token)
    alice = rules.token(token, NOW)
    assert decide("public", "x/y", None, rules).allowed
    gated_none = decide("gated", "meta/llama", None, rules)
    assert (gated_none.status, gated_none.error_code) == (401, "GatedRepo")
    gated_wrong = decide("gated", "meta/llama", alice, rules)
    assert (gated_wrong.status, gated_wrong.error_code) == (403, "GatedRepo")
    private = decide("private", "team/x", alice, rules)
    assert (private.status, private.error_code) == (404, "RepoNotFound"), "as if missing"
    anonymous = decide("private", "team/x", None, rules)
    assert (anonymous.status, anonymous.error_code) == (401, "RepoNotFound")
    assert decide("private", "org/secret-1", alice, rules).allowed


def test_the_bearer_header_as_huggingface_hub_sends_it():
    token = new_token()
    assert bearer(f"Bearer {token}") == token
    assert bearer(f"bearer  {token} ") == token
    basic = base64.b64encode(f"token:{token}".encode()).decode()
    assert bearer(f"Basic {basic}") == token, "a web seed's URL credentials"
    for header in (None, "", token, f"Basic {token}", "Bearer " + "x" * 300, "Basic !!",
                   "Basic " + base64.b64encode(b"no-colon").decode()):
        assert bearer(header) is None, header


def test_the_file_is_read_again_when_it_changes_and_a_broken_one_refuses_every_token(
        tmp_path, caplog):
    path = tmp_path / "access.toml"
    first, second = new_token(), new_token()

    def write(*tokens, extra=""):
        entries = "".join(f'[[tokens]]\nuser = "alice"\nsha256 = "{token_sha256(t)}"\n'
                          f'read = ["org/*"]\n' for t in tokens)
        tmp = path.with_suffix(".tmp")
        tmp.write_text('[users.alice]\n' + entries + extra)
        tmp.replace(path)  # as `mirror token` writes it: whole, by rename

    assert AccessFile(None).rules() is NONE
    held = AccessFile(path)
    held.CHECK_EVERY = 0  # every look stats the file (a served mirror: at most every 50 ms)
    assert held.rules().token(first, NOW) is None, "no file yet: nobody"
    write(first)
    assert held.rules().token(first, NOW).user == "alice"
    write(second)
    assert held.rules().token(first, NOW) is None, "revoked at once"
    assert held.rules().token(second, NOW) is not None
    write(second, extra="[nonsense\n")
    assert held.rules().token(second, NOW) is None, "a broken file refuses every token"
    assert "not valid TOML" in held.error
    assert any("access file refused" in r.message for r in caplog.records
               if r.name == "mirror.audit")


def test_expired_malformed_and_unknown_tokens_are_nobody():
    token = new_token()
    rules = rules_with(token, expires="2020-01-01T00:00:00Z")
    assert rules.token(token, time.time()) is None, "expired"
    live = rules_with(token, expires="2099-01-01")
    assert live.token(token, time.time()) is not None
    for presented in (None, "", "ws_short", token + "x", new_token(), "Bearer " + token,
                      "x" * 100_000):
        assert live.token(presented, NOW) is None, presented[:20] if presented else presented


@pytest.mark.parametrize(("body", "says"), [
    ({"tokens": [{"user": "ghost", "sha256": "a" * 64}]}, "user 'ghost'"),
    ({"users": {"a": {}}, "tokens": [{"user": "a", "sha256": "ws_" + "a" * 43}]}, "sha256"),
    ({"users": {"a": {}}, "tokens": [{"user": "a", "sha256": "a" * 64, "expires": "soon"}]},
     "expires"),
    ({"users": {"a": {"groups": ["nope"]}}}, "no group"),
    ({"repos": {"a/*": "private"}}, "unknown key 'repos'"),
    ({"users": {"a": {}}, "tokens": [{"user": "a", "sha256": "a" * 64, "name": "x\n"}]},
     "name"),
    ({"users": {"a": {}}, "tokens": [{"user": "a", "sha256": "a" * 64, "rights": []}]},
     "unknown key 'rights'"),
    ({"users": {"a": {}}, "tokens": [{"user": "a", "sha256": "a" * 64}] * 2}, "twice"),
    ({"users": {"../x": {}}}, "not a name"),
    ({"groups": {"g": {"read": "org/*"}}}, "must be a list"),
    ({"everything": True}, "unknown key"),
])
def test_a_hostile_access_file_is_refused_saying_what_is_wrong(body, says):
    with pytest.raises(ValueError) as refused:
        parse(body)
    assert says in str(refused.value), str(refused.value)


def test_load_refuses_bad_syntax_and_huge_files_in_one_line(tmp_path):
    bad = tmp_path / "access.toml"
    bad.write_text("[users\nalice = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)
    huge = tmp_path / "huge.toml"
    huge.write_text("# " + "x" * (2 << 20))
    with pytest.raises(ConfigError, match="more than an access file may be"):
        load(huge)
    good = tmp_path / "access.yaml"
    token = new_token()
    good.write_text(f"users:\n  alice: {{}}\ntokens:\n  - user: alice\n"
                    f"    sha256: {token_sha256(token)}\n    read: ['org/*']\n")
    assert load(good).token(token, NOW).user == "alice"
