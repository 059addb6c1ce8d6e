"""What a pull is asked (`PullSpec`), what it answers (`PullResult`), and its own error."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import hubs
from ..errors import WeightswarmError
from ..manifest import ManifestFile
from ..paths import check_repo_id, check_revision


class PullError(WeightswarmError):
    status = 502


@dataclass(frozen=True)
class PullSpec:
    repo_id: str
    revision: str = "main"
    hub: str = hubs.DEFAULT
    repo_type: str = "model"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    local_dir: Path | None = None
    dry_run: bool = False

    @classmethod
    def parse(cls, text: str, **kwargs) -> PullSpec:
        """`org/name` or `org/name@revision`."""
        repo_id, at, revision = text.partition("@")
        check_repo_id(repo_id)
        if at:
            check_revision(revision)  # "org/name@" names no revision: refused
        return cls(repo_id, revision or "main", **kwargs)


@dataclass
class PullResult:
    repo_id: str
    commit: str
    mirror: str
    files: list[dict]
    total_bytes: int
    #: bytes already in the cache before this run
    present_bytes: int = 0
    http_bytes: int = 0
    #: BitTorrent payload received in this run, by kind of source
    from_peers: int = 0
    from_mirrors: int = 0
    from_web_seeds: int = 0
    #: payload bytes received from each peer endpoint, "ip:port"
    by_peer: dict[str, int] = field(default_factory=dict)
    path: str = ""
    seconds: float = 0.0
    web_seeds_added: int = 0
    #: payload received twice (libtorrent's count: the same block from two connections, its
    #: end game), whose senders no alert names
    redundant: int = 0
    #: payload libtorrent received that neither a block alert nor `redundant` accounts for
    #: (0 unless alerts were lost); kept apart rather than guessed
    unattributed: int = 0

    @classmethod
    def of(cls, repo_id: str, commit: str, mirror: str,
           files: list[ManifestFile]) -> PullResult:
        """Before any byte is fetched: what the pull will hold."""
        return cls(repo_id, commit, mirror,
                   [{"path": f.path, "size": f.size, "sha256": f.sha256,
                     "bittorrent": f.info_hash is not None} for f in files],
                   sum(f.size for f in files))

    @property
    def bittorrent_bytes(self) -> int:
        return self.from_peers + self.from_mirrors + self.from_web_seeds
