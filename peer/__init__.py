"""The base every weightswarm node stands on, and the client that pulls models.

It imports nothing else of ours: `tracker` may import `peer`, `mirror` may import both
(DESIGN.md section 1; tests/test_layout.py holds the rule).

The base:

- errors: `errors` (one base, exact meanings), `http` (the HTTP error contract, served and read
  back), `paths` (checks on names from outside: repo ids, revisions, file paths).
- files: `atomic` (the one way a file is put in place), `store` (blobs by sha256, verified
  before they are published), `hashing` (every hash of a blob in one read pass), `weights`
  (safetensors headers).
- formats: `hubs` (the hubs, declared once), `hfformat` (Hugging Face's hashes, pointers and
  JSON), `hfcache` (the Hugging Face cache layout), `gitattributes` (which paths are LFS).
- torrents: `torrent` (one deterministic torrent per blob), `bencode`, `session` (one
  libtorrent session driven from asyncio), `steering` (which pieces a pull asks mirrors for).
- trust: `keys` (ed25519 keys), `manifest` (signed manifests and ref statements), `trust`
  (whom a peer believes: configured keys, keys pinned on first use, refs seen).
- services: `service` (the shape of every long-running service), `metrics` (Prometheus),
  `settings` (the peer's settings and the BitTorrent session's).

The client:

- `pull` (`weightswarm pull`: believe, small files over HTTP, large ones over BitTorrent,
  place into the Hugging Face cache or a folder), `daemon` (`weightswarm peer serve`: keep
  seeding what was pulled), `cli` (their commands, mounted by the root command in
  mirror/cli.py).
"""
