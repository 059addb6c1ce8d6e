"""Step 0 of a pull with `[peer] index` set (issue 18, item 5): whom the index vouches for and,
when no mirror is given, which mirrors hold the revision, nearest first.

- The index's key (`/api/weightswarm/key`) is believed if `[peer] trusted_keys` lists it, else
  pinned on first use for the index's URL, as a configured mirror's is (peer/trust.py).
- Its signed list of the mirror keys it accepts (`/api/weightswarm/keys`) must be signed by
  that key and fresh; the pull then believes manifests and ref statements signed by those keys.
- With no mirror given, its signed `locate` answer names the mirrors to ask, in its order
  (nearest first), those holding the newest commit first. They are not pinned: a mirror
  reached this way is believed only for what a configured, pinned or delegated key signed.
  A key that the locate answer names for a mirror is never believed.

An index that cannot be reached, answers what cannot be believed, or knows no mirror holding
the revision ends a pull that has no mirror of its own, in one line. A pull with mirrors given
asks the index only for its key list, and goes on without it when the index cannot be reached
(or is no index); a key list that cannot be believed ends it.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import quote

from ..errors import NotFound, RemoteNotFound, Unavailable
from ..locate import Located, read_located
from ..manifest import ManifestError
from ..trust import Trust
from .http import MirrorClient
from .spec import PullError, PullSpec

log = logging.getLogger(__name__)

#: what an unreachable index's error tells to check
SETTING = "peer.index"


class NotAnIndex(PullError):
    """`[peer] index` names a server that does not answer an index's routes."""


#: the most located mirrors a pull uses: the nearest few are enough to fall back on, and each
#: becomes a web seed and a BitTorrent endpoint the pull dials
LOCATED_MIRRORS = 8


async def consult(client: MirrorClient, index: str, trust: Trust, spec: PullSpec,
                  mirrors: list[str]) -> list[str]:
    """The mirrors the pull asks: `mirrors` if any were given (the index then only vouches
    for keys), else the ones the index locates."""
    index = index.rstrip("/")
    if mirrors:
        try:
            await delegate(client, index, trust)
        except (Unavailable, NotAnIndex) as e:
            # The mirrors given do not need it; a key list that is refused still ends the pull.
            log.warning("the index gave no key list (%s): only the configured and pinned keys "
                        "are believed", e)
        return mirrors
    key = await delegate(client, index, trust)
    found = await locate(client, index, key, spec)
    log.info("the index %s locates %s@%s on %s", index, spec.repo_id, spec.revision,
             ", ".join(found))
    return found


async def delegate(client: MirrorClient, index: str, trust: Trust) -> str:
    """Believe the mirror keys the index accepts; returns the index's key."""
    try:
        answer = await client.json(f"{index}/api/weightswarm/key", setting=SETTING)
        key = answer.get("key") if isinstance(answer, dict) else None
        if not isinstance(key, str):
            raise PullError(f"the index {index}: no key in its answer to /api/weightswarm/key")
        key = trust.trust_index(index, key)
        data = await client.bytes(f"{index}/api/weightswarm/keys", setting=SETTING)
    except RemoteNotFound as e:
        raise NotAnIndex(f"{index} answers as no index does ({e}); check peer.index") from e
    try:
        accepted = trust.delegate(data, key, now=time.time())
    except ManifestError as e:
        raise PullError(f"the index {index}: its key list refused: {e}") from e
    log.info("the index %s vouches for %d mirror keys", index, len(accepted))
    return key


async def locate(client: MirrorClient, index: str, index_key: str, spec: PullSpec) -> list[str]:
    """The base URLs of the mirrors holding the revision, in the order to ask them."""
    what = f"{spec.hub}/{spec.repo_type}/{spec.repo_id}@{spec.revision}"
    url = (f"{index}/api/weightswarm/locate/{spec.hub}/{spec.repo_type}/{spec.repo_id}"
           f"?revision={quote(spec.revision, safe='')}")
    try:
        data = await client.bytes(url, setting=SETTING)
    except RemoteNotFound as e:
        raise NotFound(f"the index {index} knows no mirror holding {what}: {e}") from e
    try:
        located = read_located(data, index_key, now=time.time(), hub=spec.hub,
                               type=spec.repo_type, repo=spec.repo_id, revision=spec.revision)
    except ManifestError as e:
        raise PullError(f"the index {index}: its locate answer refused: {e}") from e
    mirrors = mirror_order(located)
    if not mirrors:
        raise NotFound(f"the index {index} knows no mirror holding {what}")
    return mirrors


def mirror_order(located: Located, most: int = LOCATED_MIRRORS) -> list[str]:
    """The index's order (nearest first, demoted and stale last), except that the mirrors
    holding the newest commit come before those behind; each once, at most `most`."""
    newest_first = sorted(located.mirrors, key=lambda m: m.commit != located.commit)
    return list(dict.fromkeys(m.base_url for m in newest_first))[:most]
