"""A download cut mid-stream is retried against the mirror and ends byte-identical; a retry
after received bytes resumes with Range and gets a 206."""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import hf_hub_download

from helpers import DroppingProxy, make_config, make_tiny_model
from mirror.catalog import Catalog
from mirror.importer import Importer
from peer.store import BlobStore

MiB = 1024 * 1024


def test_dropped_connections_retry_and_resume_with_a_206(home, serve, tmp_path, caplog):
    # huggingface_hub 2.4 writes what it receives in 10 MiB chunks (DOWNLOAD_CHUNK_SIZE) and
    # resumes from what it wrote: a cut after 1 MiB makes it start over (200), a cut after
    # 11 MiB makes it resume from 10 MiB (206). Both happen in this one download.
    tiny = make_tiny_model(tmp_path / "tiny", big_size=12 * MiB + 17)
    config = make_config(home)
    catalog = Catalog(config.catalog_path)
    Importer(catalog, BlobStore(config.store_dir)).import_path(tiny, repo_id="tests/resume")
    catalog.close()
    running = serve(config)
    proxy = DroppingProxy(running.port, cuts=[1 * MiB, 11 * MiB])
    try:
        with caplog.at_level(logging.INFO, logger="mirror.access"):
            path = hf_hub_download("tests/resume", "big.bin", endpoint=proxy.url,
                                   cache_dir=tmp_path / "cache")
    finally:
        proxy.close()
    assert proxy.dropped == 2, "the proxy should have cut two connections"
    assert Path(path).read_bytes() == (tiny / "big.bin").read_bytes()
    lines = [r.getMessage() for r in caplog.records if r.name == "mirror.access"]
    assert any("/big.bin" in line and '" 206 ' in line for line in lines), lines
