"""Steps 1 and 2 of a pull: what the revision is, and its manifest, believed.

The configured mirrors are asked in order, nearest first (`/api/weightswarm/snapshots/...`):
the commit and, for a ref, a signed ref statement. Then the signed manifest of that commit.
Nothing else is fetched before this step has believed both:

- a configured mirror's key is pinned on first use (peer/trust.py); a mirror showing another
  key later is refused, as ssh refuses a changed host key. A peer daemon relaying has no key of
  its own: it passes on what mirrors signed. Mirrors an index located (peer/pull/index.py) are
  never pinned (`pin` False): what they serve must be signed by a configured, pinned or
  delegated key.
- a ref statement must be signed by a trusted key, name exactly the repo, ref and commit asked
  and answered, and be no older than the last one this machine saw from that key (the ledger
  of peer/trust.py refuses a replayed or rolled-back ref);
- the manifest must be signed by a trusted key and be for exactly this repo and commit.

A mirror that answers but whose answer is refused (a bad signature, a stale ref) ends the pull:
it is not a reason to believe the next mirror instead. A mirror that has no answer is passed
over for the next one.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .. import atomic
from ..errors import (
    GatedRepo,
    IntegrityError,
    NotFound,
    RemoteError,
    Unavailable,
    WeightswarmError,
)
from ..manifest import Manifest, ManifestError, read_manifest, read_ref
from ..paths import is_commit
from ..trust import Trust
from .http import MirrorClient
from .spec import PullError, PullSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Believed:
    mirror: str
    commit: str
    manifest: Manifest


async def believe(client: MirrorClient, spec: PullSpec, mirrors: list[str], trust: Trust,
                  home: Path, *, pin: bool = True, keep: bool = True) -> Believed:
    """The first mirror's answer that has one; what it signed is kept in `home` for the peer
    daemon to relay (`keep`: not what a token brought). `pin`: pin each mirror's key on first
    use (mirrors configured, not located)."""
    errors: list[WeightswarmError] = []
    for mirror in mirrors:
        try:
            return await _believe_from(client, spec, mirror, trust, home, pin, keep)
        except (ManifestError, IntegrityError) as e:
            raise PullError(f"{mirror}: refused: {e}") from e
        except GatedRepo as e:
            hint = "this token may not read it" if client.auth(mirror + "/") else \
                "pull with --token (or peer.token), a token of this mirror"
            raise PullError(f"{mirror}: {spec.repo_id} is gated: {hint}") from e
        except (RemoteError, PullError) as e:
            log.info("%s: no answer for %s@%s (%s); asking the next mirror", mirror,
                     spec.repo_id, spec.revision, e)
            errors.append(e)
    said = "; ".join(str(e) for e in errors)
    if all(isinstance(e, Unavailable) for e in errors):
        # Not "no mirror has it": none could say (olah#62: an unreachable upstream reported
        # as a missing repo, which a client then believes).
        raise Unavailable(f"no mirror answered for {spec.repo_id}@{spec.revision}: {said}")
    raise NotFound(f"no mirror has {spec.repo_id}@{spec.revision}: {said}")


async def _believe_from(client: MirrorClient, spec: PullSpec, mirror: str, trust: Trust,
                        home: Path, pin: bool, keep: bool) -> Believed:
    if pin:
        with contextlib.suppress(NotFound):  # a peer daemon relaying has no key of its own
            answer = await client.json(f"{mirror}/api/weightswarm/key")
            trust.pin(mirror, answer["key"])
    trusted = trust.keys()
    base = f"{mirror}/api/weightswarm/snapshots/{spec.hub}/{spec.repo_type}/{spec.repo_id}"
    snap = await client.json(f"{base}?revision={quote(spec.revision, safe='')}")
    if snap.get("access") == "gated" and not client.auth(f"{mirror}/"):
        # Its bytes need a token: refused here, before any is asked for.
        raise GatedRepo(spec.repo_id)
    commit = snap.get("commit")
    if not isinstance(commit, str) or not is_commit(commit):
        raise PullError(f"{mirror}: no commit in its answer")
    _check_revision(spec, snap, commit, trust, trusted)
    data = await client.bytes(
        f"{mirror}/api/weightswarm/manifests/{spec.hub}/{spec.repo_type}/{spec.repo_id}/"
        f"{commit}")
    manifest, key = read_manifest(data, trusted)
    if (manifest.hub, manifest.type, manifest.repo, manifest.commit) != \
            (spec.hub, spec.repo_type, spec.repo_id, commit):
        raise ManifestError("the manifest is for another repo or commit")
    log.info("%s@%s is %s, manifest signed by %s", spec.repo_id, spec.revision, commit[:12],
             key)
    if keep:
        _keep(home, spec, snap, data, commit)
    return Believed(mirror, commit, manifest)


def _check_revision(spec: PullSpec, snap: dict, commit: str, trust: Trust,
                    trusted: frozenset[str]) -> None:
    """A commit asked for must be the one answered; a ref needs its signed statement."""
    if is_commit(spec.revision):
        if commit != spec.revision:
            raise ManifestError(f"asked for commit {spec.revision}, answered {commit}")
        return
    text = snap.get("ref_statement")
    try:
        signed = bytes.fromhex(text)
    except (TypeError, ValueError):
        raise ManifestError(f"no signed ref statement (hex) for {spec.revision}") from None
    statement, key = read_ref(signed, trusted)
    if (statement.hub, statement.type, statement.repo, statement.ref, statement.commit) \
            != (spec.hub, spec.repo_type, spec.repo_id, spec.revision, commit):
        raise ManifestError("the ref statement is for another repo, ref or commit")
    trust.accept_ref(statement, key)


def _keep(home: Path, spec: PullSpec, snap: dict, manifest: bytes, commit: str) -> None:
    """Keep what the peer daemon relays: signed, so any peer may pass it on."""
    folder = home / "manifests" / spec.hub / spec.repo_type / spec.repo_id
    atomic.write_file(folder / f"{commit}.msgpack", manifest)
    refs = home / "snapshots" / spec.hub / spec.repo_type / spec.repo_id
    atomic.write_file(refs / f"{quote(spec.revision, safe='')}.json", json.dumps(snap).encode())
