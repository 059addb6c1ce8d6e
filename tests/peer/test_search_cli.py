"""`weightswarm search TEXT` (issue 18, item 3): the table of repo, hub, size, mirrors,
seeders and updated, from a real mirror's own listing (no `weightswarm` field: "-") and from an
index's (tests/fakeindex.py until the real index lands), and the pure parts behind it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeindex import FakeIndex

from helpers import (
    free_port,
    make_config,
    make_tiny_model,
    start_mirror,
    start_service,
    wait_for,
)
from mirror.catalog import Catalog
from mirror.cli import cli
from mirror.config import load_config
from mirror.importer import Importer
from peer.search import Found, found, found_in, human_size, search_url, table
from peer.store import BlobStore
from tracker import app as tracker_app

# -- pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                         (12 * 2**20, "12.0 MiB"), (1.2 * 2**30, "1.2 GiB"),
                                         (3 * 2**40, "3.0 TiB"), (2**70, "1048576.0 PiB")])
def test_sizes_are_human(n, text):
    assert human_size(int(n)) == text


def test_the_url_asked_follows_the_hub_and_type():
    assert search_url("http://i:6969/", "bert base", limit=5) == \
        "http://i:6969/api/models?search=bert+base&limit=5"
    assert search_url("http://i", "x", hub="modelscope", repo_type="dataset") == \
        "http://i/hubs/modelscope/api/datasets?search=x&limit=20"
    assert search_url("http://i", "a&b=c") == "http://i/api/models?search=a%26b%3Dc&limit=20"


def test_an_index_item_gives_every_column():
    item = {"id": "org/m", "lastModified": "2024-03-04T05:06:07.000Z",
            "createdAt": "2023-01-01T00:00:00.000Z",
            "weightswarm": {"mirrors": 3, "behind": 1, "seeders": 7, "size": 1288490189,
                            "hub": "huggingface"}}
    assert found(item, "modelscope") == Found("org/m", "huggingface", 1288490189, 3, 1, 7,
                                              "2024-03-04")


def test_a_mirror_item_shows_what_it_has_and_dashes_for_the_rest():
    row = found({"id": "org/m", "createdAt": "2023-01-01T00:00:00.000Z", "usedStorage": 2048},
                "kaggle")
    assert row == Found("org/m", "kaggle", 2048, None, None, None, "2023-01-01")
    assert table([row])[1].split() == ["org/m", "kaggle", "2.0", "KiB", "-", "-", "2023-01-01"]


@pytest.mark.parametrize("ours", [
    {"mirrors": "3", "seeders": True, "size": -1, "behind": float("nan"), "hub": 5},
    {"mirrors": [3], "seeders": None, "size": float("inf"), "behind": {}, "hub": None},
    "not a map",
])
def test_hostile_values_count_as_missing(ours):
    row = found({"id": "org/m", "weightswarm": ours, "lastModified": "yesterday",
                 "createdAt": 1}, "huggingface")
    assert row == Found("org/m", "huggingface", None, None, None, None, None)


def test_no_escape_sequence_reaches_the_terminal():
    row = found({"id": "org/\x1b[31mred\x07", "weightswarm": {"hub": "hf\n2"}}, "huggingface")
    assert row.repo == "org/?[31mred?" and row.hub == "hf?2"


def test_an_answer_that_is_not_a_listing_is_one_error():
    from peer.search import SearchError

    for data in (b"<html>", b'{"error": "x"}'):
        with pytest.raises(SearchError):
            found_in(data, "huggingface", "http://i/api/models")
    assert found_in(b'[{"id": "a/b"}, 5, "x"]', "huggingface") == [
        Found("a/b", "huggingface", None, None, None, None, None)]


def test_the_table_aligns_numbers_right_and_marks_mirrors_behind():
    rows = [Found("org/long-name", "huggingface", 2**30, 12, 2, 5, "2024-01-01"),
            Found("o/s", "kaggle", 10, 1, 0, 0, None)]
    lines = table(rows)
    assert lines[0].split() == ["repo", "hub", "size", "mirrors", "seeders", "updated"]
    assert lines[1].split()[:4] == ["org/long-name", "huggingface", "1.0", "GiB"]
    assert "12 (2 behind)" in lines[1] and "(0 behind)" not in lines[2]
    assert lines[2].endswith("-")
    size_end = lines[0].index("size") + len("size")
    assert lines[1].index("GiB") + 3 == lines[2].index(" B") + 2 == size_end, \
        "sizes end under their header"
    seeders_end = lines[0].index("seeders") + len("seeders")
    assert lines[1][seeders_end - 1] == "5" and lines[2][seeders_end - 1] == "0", lines
    assert lines[1].index("2024") == lines[2].index("-", seeders_end) == \
        lines[0].index("updated"), "the dates start under their header"


# -- the command -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    config = make_config(root / "home", seed=False)
    catalog = Catalog(config.catalog_path)
    try:
        Importer(catalog, BlobStore(config.store_dir)).import_path(
            make_tiny_model(root / "tiny", big_size=4096), repo_id="org/tiny-search")
    finally:
        catalog.close()
    running = start_mirror(config)
    yield running
    running.stop()


def run(home: Path, *args: str, env: dict | None = None):
    result = CliRunner().invoke(cli, ["--home", str(home), "search", *args], env=env or {},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_search_of_a_mirror_shows_dashes_for_what_only_an_index_knows(mirror, tmp_path):
    lines = run(tmp_path, "tiny", "--endpoint", mirror.url)
    assert lines[0].split() == ["repo", "hub", "size", "mirrors", "seeders", "updated"]
    assert len(lines) == 2, lines
    cells = lines[1].split()
    assert cells[:2] == ["org/tiny-search", "huggingface"]
    assert cells[-3:-1] == ["-", "-"], "no mirrors or seeders in a mirror's own listing"
    assert len(cells[-1]) == 10 and cells[-1][4] == "-", f"a date: {cells[-1]}"


def test_search_defaults_to_the_first_configured_mirror_and_says_when_nothing_matches(
        mirror, tmp_path):
    lines = run(tmp_path, "no-such-model-here", env={"WEIGHTSWARM_PEER_MIRRORS": mirror.url})
    assert lines == [f"no model matches 'no-such-model-here' at {mirror.url}"]
    [item] = json.loads(run(tmp_path, "tiny", "--json",
                            env={"WEIGHTSWARM_PEER_MIRRORS": mirror.url})[0])
    assert item["repo"] == "org/tiny-search" and item["mirrors"] is None


def test_search_of_the_index_shows_its_mirrors_seeders_and_sizes(tmp_path):
    with FakeIndex() as index:
        index.listing[("huggingface", "models")] = [
            {"id": "org/big", "lastModified": "2024-05-06T07:08:09.000Z",
             "weightswarm": {"mirrors": 3, "behind": 1, "seeders": 12,
                             "size": int(1.2 * 2**30), "hub": "huggingface"}},
            {"id": "org/small", "createdAt": "2023-02-03T00:00:00.000Z",
             "weightswarm": {"mirrors": 1, "behind": 0, "seeders": 0, "size": 512,
                             "hub": "huggingface"}}]
        index.listing[("kaggle", "datasets")] = [
            {"id": "org/data", "weightswarm": {"mirrors": 2, "behind": 0, "seeders": 1,
                                               "size": 5 * 2**20, "hub": "kaggle"}}]
        lines = run(tmp_path, "org", "--limit", "5", env={"WEIGHTSWARM_PEER_INDEX": index.url})
        assert "/api/models?search=org&limit=5" in index.asked
        assert lines[1].split() == ["org/big", "huggingface", "1.2", "GiB", "3", "(1",
                                    "behind)", "12", "2024-05-06"]
        assert lines[2].split() == ["org/small", "huggingface", "512", "B", "1", "0",
                                    "2023-02-03"]
        lines = run(tmp_path, "data", "--hub", "kaggle", "--type", "dataset",
                    env={"WEIGHTSWARM_PEER_INDEX": index.url})
        assert "/hubs/kaggle/api/datasets?search=data&limit=20" in index.asked
        assert lines[1].split() == ["org/data", "kaggle", "5.0", "MiB", "2", "1", "-"]


def test_search_with_nothing_to_ask_or_an_unreachable_endpoint_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("WEIGHTSWARM_PEER_INDEX", "WEIGHTSWARM_PEER_MIRRORS")}
    weightswarm = str(Path(sys.executable).with_name("weightswarm"))
    port = free_port()
    for args, expected in [
        ((), "error: nothing to search: set [peer] index or [peer] mirrors, or pass --endpoint"),
        (("--endpoint", f"http://127.0.0.1:{port}"),
         f"error: could not reach 127.0.0.1:{port}: the connection was refused"),
    ]:
        done = subprocess.run([weightswarm, "--home", str(tmp_path), "search", "x", *args],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and done.stderr.startswith(expected), done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr


def test_search_of_the_real_index_counts_the_mirrors_holding_each_repo(tmp_path):
    from peer.keys import load_or_create, public_key_text

    home = tmp_path / "mirror"
    config = make_config(home)
    key_file = tmp_path / "mirror_keys"
    key_file.write_text(f"{public_key_text(load_or_create(config.key_path))} only\n")
    catalog = Catalog(config.catalog_path)
    try:
        Importer(catalog, BlobStore(config.store_dir)).import_path(
            make_tiny_model(tmp_path / "tiny", big_size=4096), repo_id="org/indexed-one")
    finally:
        catalog.close()
    index_config = load_config(home=tmp_path / "index", env={}, overrides={
        ("tracker", "host"): "127.0.0.1", ("tracker", "port"): 0,
        ("tracker", "mirror_keys"): str(key_file), ("tracker", "poll_interval"): 0.2}).tracker
    index = start_service(tracker_app.start, index_config)
    mirror = start_mirror(make_config(home, index=index.url, seed=False))
    try:
        def listed() -> list[dict]:
            return json.loads(run(tmp_path, "indexed", "--json",
                                  env={"WEIGHTSWARM_PEER_INDEX": index.url})[0])

        [item] = wait_for(listed, 30, "the index lists the mirror's repo")
        assert (item["repo"], item["hub"], item["mirrors"], item["behind"]) == \
            ("org/indexed-one", "huggingface", 1, 0)
        assert item["size"] > 4096 and item["seeders"] == 0 and item["updated"]
        lines = run(tmp_path, "indexed", env={"WEIGHTSWARM_PEER_INDEX": index.url})
        cells = lines[1].split()
        assert cells[0] == "org/indexed-one" and cells[-3:-1] == ["1", "0"], lines
    finally:
        mirror.stop()
        index.stop()
