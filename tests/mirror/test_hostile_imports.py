"""What an import does with bad content: lying weights are flagged and served as they are, a
broken card is imported without metadata, hostile names are refused."""

from __future__ import annotations

import logging
import os

import pytest
from huggingface_hub import HfApi, hf_hub_download

from helpers import make_config, make_tiny_model
from mirror.catalog import Catalog
from mirror.importer import Importer
from peer.errors import RepoNotFound, UnsafePath
from peer.store import BlobStore

REPO = "tests/suspicious"


def _import(home, folder, repo_id=REPO):
    config = make_config(home)
    catalog = Catalog(config.catalog_path)
    try:
        Importer(catalog, BlobStore(config.store_dir)).import_path(folder, repo_id=repo_id)
    finally:
        catalog.close()
    return config


def test_truncated_and_lying_safetensors_are_flagged_and_served_as_files(home, serve, tmp_path,
                                                                        caplog):
    tiny = make_tiny_model(tmp_path / "tiny")
    data = (tiny / "model.safetensors").read_bytes()
    (tiny / "model.safetensors").write_bytes(data[:-5])
    header_len = int.from_bytes(data[:8], "little")
    lying = (header_len + 10**6).to_bytes(8, "little") + data[8:]
    (tiny / "lying.safetensors").write_bytes(lying)
    with caplog.at_level(logging.WARNING, logger="mirror.importer"):
        config = _import(home, tiny)
    assert any("model.safetensors" in r.getMessage() for r in caplog.records)
    running = serve(config)
    info = HfApi(endpoint=running.url).model_info(REPO)
    flagged = info.invalidSafetensors
    assert set(flagged) == {"model.safetensors", "lying.safetensors"}, flagged
    assert "past the end" in flagged["lying.safetensors"]
    assert info.safetensors is None, "no parameter count from files that do not validate"
    path = hf_hub_download(REPO, "lying.safetensors", endpoint=running.url,
                           cache_dir=tmp_path / "cache")
    assert open(path, "rb").read() == lying, "served byte for byte as the upstream had it"


def test_a_malformed_model_card_is_imported_with_empty_metadata_and_a_warning(home, serve,
                                                                             tmp_path, caplog):
    tiny = make_tiny_model(tmp_path / "tiny")
    card = "---\nlicense: [unclosed\ntags: {\n---\n# still a readme\n"
    (tiny / "README.md").write_text(card)
    with caplog.at_level(logging.WARNING, logger="mirror.importer"):
        config = _import(home, tiny)
    assert any("README.md" in r.getMessage() and "YAML" in r.getMessage() for r in caplog.records)
    running = serve(config)
    info = HfApi(endpoint=running.url).model_info(REPO)
    assert info.card_data is None or dict(info.card_data) == {}
    path = hf_hub_download(REPO, "README.md", endpoint=running.url, cache_dir=tmp_path / "c")
    assert open(path).read() == card


@pytest.mark.parametrize("name", ["new\nline.txt", "back\\slash.txt", "tab\there", "del\x7f"])
def test_files_with_hostile_names_are_refused_and_nothing_published(home, tmp_path, name):
    tiny = make_tiny_model(tmp_path / "tiny")
    (tiny / name).write_text("x")
    with pytest.raises(UnsafePath):
        _import(home, tiny)
    catalog = Catalog(make_config(home).catalog_path)
    with pytest.raises(RepoNotFound):
        catalog.repo("huggingface", "model", REPO)
    catalog.close()


def test_a_symlinked_folder_pointing_outside_is_refused(home, tmp_path):
    tiny = make_tiny_model(tmp_path / "tiny")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside, tiny / "linked")
    with pytest.raises(UnsafePath, match="outside"):
        _import(home, tiny)


def test_a_path_that_is_not_a_folder_is_refused(home, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        _import(home, tmp_path / "file.txt")
    with pytest.raises(ValueError, match="not a folder"):
        _import(home, tmp_path / "missing")
