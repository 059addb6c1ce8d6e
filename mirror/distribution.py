"""What a mirror publishes for peers: signed manifests and ref statements, and one torrent per
large blob with its trackers and web seed (DESIGN.md sections 2, 3 and 8).

The torrents are built from the piece hashes the store recorded at ingest (no second read); a
blob of a gated or private repo gets `private: 1`. Web-seed URLs carry `public_url` and never a
hub prefix: blobs are content-addressed and shared by every hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peer import hubs
from peer.bencode import bencode
from peer.errors import NotFound
from peer.manifest import Manifest, ManifestFile, RefStatement, sign_manifest, sign_ref
from peer.torrent import info_dict, info_hash

from .catalog import DEFAULT_BRANCHES, BlobRecord, Catalog, Repo, Snapshot, ref_of


def blob_info(record: BlobRecord, *, private: bool) -> dict | None:
    """The blob's info dict, or None when it travels over HTTP only (small or not LFS)."""
    if not record.piece_length:
        return None
    return info_dict(record.sha256, record.size, record.piece_length, record.pieces,
                     private=private)


def torrent_file(info: dict, trackers: list[str], web_seed: str) -> bytes:
    torrent: dict = {"info": info, "url-list": [web_seed]}
    if trackers:
        torrent["announce"] = trackers[0]
        torrent["announce-list"] = [[t] for t in trackers]
    return bencode(torrent)


def magnet(info: dict, trackers: list[str], web_seed: str, peers: list[str] = ()) -> str:
    """A magnet link; `peers`: BitTorrent endpoints to dial at once (BEP 9 `x.pe`, host:port),
    which a client that uses them (libtorrent's) needs no tracker for."""
    parts = [f"xt=urn:btih:{info_hash(info)}", f"dn={info['name']}", f"xl={info['length']}"]
    parts += [f"tr={quote(t, safe='')}" for t in trackers]
    parts.append(f"ws={quote(web_seed, safe='')}")
    parts += [f"x.pe={quote(p, safe=':[]')}" for p in peers]
    return "magnet:?" + "&".join(parts)


def peer_address(base_url: str, port: int) -> str:
    """The mirror's BitTorrent endpoint as a magnet's `x.pe` names it: the host clients reach
    its HTTP API by, and its BitTorrent port."""
    host = urlsplit(base_url).hostname
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Distribution:
    """The lookups behind /api/weightswarm/{snapshots,manifests,torrents}; one thread."""

    def __init__(self, catalog: Catalog, key: Ed25519PrivateKey, scan_policy: str = "flag"):
        self.catalog = catalog
        self.key = key
        self.scan_policy = scan_policy

    def _private(self, sha256: str) -> bool:
        """A blob is private content when no public repo holds it: bytes that any public repo
        serves are public whatever else holds them, and share the public swarm."""
        return not self.catalog.blob_is_public(sha256)

    def manifest(self, hub: str, repo_type: str, repo_id: str, commit: str) -> bytes:
        repo = self.catalog.repo(hub, repo_type, repo_id)
        snapshot = self.catalog.snapshot(repo, commit)
        # A snapshot a bundle brought is served as the mirror that verified it signed it
        # (mirror/bundle/): the trust a peer has in that mirror carries across the gap.
        carried = self.catalog.signed_manifest(hub, repo_type, repo_id, commit)
        return carried if carried is not None else self.signed_manifest(repo, snapshot)

    def signed_manifest(self, repo: Repo, snapshot: Snapshot) -> bytes:
        """This mirror's own signed manifest of a snapshot, whatever the repo's access."""
        files = []
        for f in self.catalog.files(snapshot):
            record = self.catalog.blob(f.sha256) if f.lfs else None
            info = blob_info(record, private=self._private(f.sha256)) if record else None
            files.append(ManifestFile(f.path, f.size, f.sha256, f.git_sha1, f.lfs,
                                      info_hash(info) if info else None))
        return sign_manifest(Manifest(repo.hub, repo.type, repo.repo_id, snapshot.commit,
                                      tuple(files)), self.key)

    def snapshot(self, hub: str, repo_type: str, repo_id: str, revision: str) -> dict:
        """A revision resolved: its commit, a signed ref statement when it is a ref, and where
        the manifest is."""
        repo = self.catalog.repo(hub, repo_type, repo_id)
        commit = self.catalog.resolve(repo, revision)
        answer = {"hub": hub, "type": repo_type, "repo": repo_id, "revision": revision,
                  "commit": commit, "access": repo.access,
                  "manifest": f"/api/weightswarm/manifests/{hub}/{repo_type}/{repo_id}/{commit}"}
        kind, name = ref_of(revision)
        for ref in self.catalog.refs(repo):
            # `main` may be ModelScope's `master` (Catalog.resolve): the ref that resolved
            if ref.commit == commit and (ref.kind == kind or kind == "branch") and (
                    ref.name == name or (repo.hub == hubs.MODELSCOPE
                                         and {name, ref.name} == set(DEFAULT_BRANCHES))):
                statement = RefStatement(hub, repo_type, repo_id, revision, ref.commit, ref.seq)
                answer["ref_statement"] = sign_ref(statement, self.key).hex()
                break
        return answer

    def torrent(self, sha256: str) -> Torrent:
        """A blob's torrent, and whom it may go to: anyone (a public repo holds it), else a
        reader of a repo that holds it, who announces with a key of their own (`private: 1`)."""
        record = self.catalog.blob(sha256)
        if record is None or not self.catalog.referenced(sha256):
            raise NotFound(f"no blob {sha256}")
        public = not self._private(sha256)
        info = blob_info(record, private=not public)
        if info is None:
            # said only of a public blob: a private one's refusal says no more than "no blob"
            raise NotFound(f"blob {sha256} travels over HTTP only (no torrent)" if public
                           else f"no blob {sha256}")
        holders = () if public else tuple(self.catalog.blob_access(sha256))
        quarantined = self.scan_policy == "quarantine" and self.catalog.suspicious(sha256)
        return Torrent(info, record, public, holders, quarantined)


@dataclass(frozen=True)
class Torrent:
    info: dict
    record: BlobRecord
    public: bool
    #: (hub, type, repo id, access) of the repos that hold a blob no public repo holds
    holders: tuple[tuple[str, str, str, str], ...]
    quarantined: bool
