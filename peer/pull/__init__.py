"""`weightswarm pull`: a model from nearby peers into the Hugging Face cache (DESIGN.md
section 4, flow 5), in four steps, one module each:

0. `index` (with `[peer] index` set): believe the mirror keys the index vouches for and, with
   no mirror given, ask it which mirrors hold the revision, nearest first (issue 18).
1. `believe`: ask the configured (or located) mirrors, nearest first, what the revision is (the
   commit and, for a ref, a signed ref statement), and fetch its signed manifest; believe them
   only if a trusted key signed them (peer/trust.py). Nothing else is fetched before this.
2. `http`: the small files, over HTTP from the first mirror that has them.
3. `swarm`: the large files, over BitTorrent, all at once, in one session on an ephemeral
   port. The mirrors' web seeds are held back and join a torrent only when no peer has
   delivered for `web_seed_grace` seconds, so a site's peers carry the load its mirror would;
   the mirrors' pieces are shared out among the pulls fetching them (peer/steering.py).
   libtorrent checks each piece against the torrent, whose info-hash the manifest signs; the
   whole file is then checked against the manifest's sha256.
4. `place`: blobs are written into the cache's `blobs/` under a temporary name and renamed to
   their ETag once verified; the snapshot's links and the ref follow (or, with `--local-dir`,
   the files are moved to their paths in a plain folder). A peer daemon later seeds them from
   the cache, no copy.

`run` holds `Pull`, which does them in that order; `spec` what a pull is asked and answers.
An interrupted pull (Ctrl-C, a crash) starts again where it stopped: libtorrent finds the
pieces already in the partial files (resume data saves it re-hashing them after a Ctrl-C).
"""

from .run import Pull
from .spec import PullError, PullResult, PullSpec

__all__ = ["Pull", "PullError", "PullResult", "PullSpec"]
