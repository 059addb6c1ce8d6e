"""What a mirror publishes for peers: signed manifests, ref statements, torrents, magnets."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request

import pytest

from helpers import make_config, make_tiny_model
from mirror.catalog import Catalog
from mirror.importer import Importer
from peer.bencode import bdecode
from peer.manifest import RefLedger, read_manifest, read_ref
from peer.store import BlobStore
from peer.torrent import info_hash

lt = pytest.importorskip("libtorrent")


@pytest.fixture
def mirror(tmp_path, serve):
    config = make_config(tmp_path / "home", trackers=["http://tracker.example:6969/announce"])
    catalog = Catalog(config.catalog_path)
    importer = Importer(catalog, BlobStore(config.store_dir))
    tiny = make_tiny_model(tmp_path / "tiny")
    importer.import_path(tiny, repo_id="org/open", tags=["v1"])
    importer.import_path(tiny, repo_id="org/gated", access="gated")
    catalog.close()
    running = serve(config)
    running.tiny = tiny
    return running


def get(url: str) -> bytes:
    with urllib.request.urlopen(url) as r:
        return r.read()


def test_snapshot_ref_statement_and_manifest_verify_with_the_mirror_key(mirror):
    key = json.loads(get(f"{mirror.url}/api/weightswarm/key"))["key"]
    snap = json.loads(get(f"{mirror.url}/api/weightswarm/snapshots/huggingface/model/org/open"
                          "?revision=v1"))
    statement, signer = read_ref(bytes.fromhex(snap["ref_statement"]), {key})
    assert signer == key and statement.commit == snap["commit"] and statement.ref == "v1"
    RefLedger().accept(statement, signer)
    manifest, _ = read_manifest(get(mirror.url + snap["manifest"]), {key})
    files = {f.path: f for f in manifest.files}
    big = (mirror.tiny / "big.bin").read_bytes()
    assert files["big.bin"].sha256 == hashlib.sha256(big).hexdigest()
    assert files["big.bin"].info_hash and files["config.json"].info_hash is None


def test_a_blob_torrent_is_deterministic_with_trackers_and_a_web_seed(mirror):
    big = (mirror.tiny / "big.bin").read_bytes()
    sha = hashlib.sha256(big).hexdigest()
    data = get(f"{mirror.url}/api/weightswarm/torrents/{sha}.torrent")
    torrent = bdecode(data)
    assert torrent[b"announce"] == b"http://tracker.example:6969/announce"
    assert torrent[b"url-list"] == [f"{mirror.url}/blobs/sha256/{sha}".encode()]
    assert set(torrent[b"info"]) == {b"name", b"length", b"piece length", b"pieces"}
    ti = lt.torrent_info(lt.bdecode(data))
    assert ti.info_hash().to_string().hex() == info_hash(
        {k.decode(): v for k, v in torrent[b"info"].items()})
    magnet = json.loads(get(f"{mirror.url}/api/weightswarm/torrents/{sha}.torrent?format=magnet"))
    assert magnet["magnet"].startswith(f"magnet:?xt=urn:btih:{ti.info_hash().to_string().hex()}")
    assert "ws=http" in magnet["magnet"] and "tr=http" in magnet["magnet"]
    port = json.loads(get(f"{mirror.url}/"))["bittorrent_port"]
    assert magnet["magnet"].endswith(f"&x.pe=127.0.0.1:{port}"), "the mirror itself as a peer"
    assert lt.parse_magnet_uri(magnet["magnet"]).peers == [("127.0.0.1", port)]


def test_a_blob_only_a_gated_repo_holds_gets_no_torrent_yet(mirror, tmp_path):
    config = mirror.config
    catalog = Catalog(config.catalog_path)
    only_gated = tmp_path / "gated-only"
    only_gated.mkdir()
    (only_gated / "weights.bin").write_bytes(b"\x01" * (5 * 1024 * 1024))
    Importer(catalog, BlobStore(config.store_dir)).import_path(only_gated, repo_id="org/secret",
                                                                access="gated")
    catalog.close()
    sha = hashlib.sha256(b"\x01" * (5 * 1024 * 1024)).hexdigest()
    with pytest.raises(urllib.error.HTTPError) as e:
        get(f"{mirror.url}/api/weightswarm/torrents/{sha}.torrent")
    assert e.value.code == 404


def test_small_files_and_gated_blobs_get_no_torrent_and_hostile_names_a_400(mirror):
    small = hashlib.sha256((mirror.tiny / "config.json").read_bytes()).hexdigest()
    for name, codes in ((small, {404}), ("../../etc", {400, 404}), ("A" * 64, {400})):
        with pytest.raises(urllib.error.HTTPError) as e:
            get(f"{mirror.url}/api/weightswarm/torrents/{name}.torrent")
        assert e.value.code in codes, name
    for path, code in (("snapshots/huggingface/model/org/missing", 404),
                       ("snapshots/nohub/model/org/open", 404),
                       ("snapshots/huggingface/model/a--b", 400),
                       ("manifests/huggingface/model/org/open/notacommit", 400)):
        with pytest.raises(urllib.error.HTTPError) as e:
            get(f"{mirror.url}/api/weightswarm/{path}")
        assert e.value.code == code, path


def test_a_web_seed_head_of_a_blob_gone_from_the_store_is_not_a_200(mirror):
    """The lookup is cached; the HEAD (a web seed's, the index's spot-check) looks again."""
    sha = hashlib.sha256((mirror.tiny / "big.bin").read_bytes()).hexdigest()
    url = f"{mirror.url}/blobs/sha256/{sha}"
    head = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(head) as r:  # the answer is now cached
        assert r.status == 200 and r.headers["Content-Length"] == str(5 * 1024 * 1024)
    BlobStore(mirror.config.store_dir).path_for(sha).unlink()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(head)
    assert e.value.code == 503, "our fault, not the client's 'not found'"
