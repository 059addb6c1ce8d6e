"""Aliases (issue 17): old names of repos and retired URLs (TensorFlow Hub, the ONNX Model Zoo
on GitHub) answered with a redirect to the repo the mirror holds, which the stock client
follows; a table in the settings or a TOML/YAML file of one."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download

from helpers import make_config, make_tiny_model
from mirror.aliases import Aliases, read_aliases, redirected, url_key
from mirror.catalog import Catalog
from mirror.importer import Importer
from mirror.routes import parse
from peer import hubs
from peer.errors import ConfigError
from peer.store import BlobStore

TFHUB = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/classification/5"
ZOO = "github.com/onnx/models/raw/main/validated/vision/classification/mobilenet"
TABLE = {
    "hf:old-org/tiny": "hf:new-org/tiny",
    TFHUB: "kaggle:google/mobilenet-v2/tensorFlow2/100-224-classification/5",
    ZOO: "hf:onnx/mobilenet",
}


def test_the_table_parses_repo_and_url_aliases():
    aliases = Aliases.parse(TABLE)
    assert aliases.for_repo(parse("/api/models/old-org/tiny")).repo_id == "new-org/tiny"
    assert aliases.for_repo(parse("/api/models/other/tiny")) is None
    assert aliases.for_url("http://TFHUB.dev/google/imagenet/mobilenet_v2_100_224/"
                           "classification/5/") == (
        "/hubs/kaggle/api/models/google/mobilenet-v2.tensorFlow2.100-224-classification/"
        "revision/v5")
    assert aliases.for_url(f"https://{ZOO}/model/mobilenetv2-12.onnx") == (
        "/onnx/mobilenet/resolve/main/model/mobilenetv2-12.onnx")
    assert aliases.for_url(f"{ZOO}/../../etc/passwd") is None, "no path out of the repo"
    assert aliases.for_url("example.com/nothing") is None
    assert url_key("HTTPS://Host.example/a%20b/") == "host.example/a b"


@pytest.mark.parametrize(("table", "says"), [
    ({"hf:a/b": "nothing"}, "names a repo"),
    ({"hf:a/b": "hf:a/*"}, "one repo"),
    ({"not a url": "hf:a/b"}, "host name"),
    ("", "a table"),
])
def test_bad_aliases_are_refused_by_name(tmp_path, table, says):
    with pytest.raises(ValueError, match=says):
        Aliases.parse(read_aliases(table))


def test_aliases_come_from_a_toml_or_yaml_file(tmp_path):
    toml = tmp_path / "aliases.toml"
    toml.write_text('[aliases]\n"hf:old/name" = "hf:new/name"\n')
    yaml = tmp_path / "aliases.yaml"
    yaml.write_text('"tfhub.dev/google/x/1": "kaggle:google/x/tensorFlow2/y/1"\n')
    for path in (toml, yaml):
        (tmp_path / "weightswarm.toml").write_text(f'[mirror]\naliases = "{path}"\n')
        config = make_config(tmp_path)
        assert config.mirror.aliases
    (tmp_path / "weightswarm.toml").write_text('[mirror]\naliases = "/no/such/file.toml"\n')
    with pytest.raises(ConfigError, match="cannot read the aliases file"):
        make_config(tmp_path)


def test_redirected_paths_keep_the_call_and_swap_the_repo():
    target = Aliases.parse({"hf:a/b": "ms:c/d"}).repos[(hubs.HUGGINGFACE, "model", "a/b")]
    for raw, moved in (
        ("/api/models/a/b", "/hubs/modelscope/api/models/c/d"),
        ("/api/models/a/b/revision/main", "/hubs/modelscope/api/models/c/d/revision/main"),
        ("/a/b/resolve/main/config.json", "/hubs/modelscope/c/d/resolve/main/config.json"),
        ("/api/models/a/b/tree/main/sub", "/hubs/modelscope/api/models/c/d/tree/main/sub"),
    ):
        assert redirected(parse(raw), raw, target) == moved


def test_the_stock_client_follows_an_old_repo_name_and_old_urls_redirect(tmp_path, serve):
    home = tmp_path / "home"
    home.mkdir()
    (home / "weightswarm.toml").write_text("[mirror.aliases]\n" + "".join(
        f'"{old}" = "{new}"\n' for old, new in TABLE.items()))
    config = make_config(home)
    catalog = Catalog(config.catalog_path)
    try:
        tiny = make_tiny_model(tmp_path / "tiny")
        Importer(catalog, BlobStore(config.store_dir)).import_path(tiny, repo_id="new-org/tiny")
    finally:
        catalog.close()
    mirror = serve(config)
    cached = hf_hub_download("old-org/tiny", "config.json", endpoint=mirror.url,
                             cache_dir=tmp_path / "hf")
    assert Path(cached).read_bytes() == (tiny / "config.json").read_bytes()
    assert HfApi(endpoint=mirror.url).model_info("old-org/tiny").id == "new-org/tiny"

    class NoFollow(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    opener = urllib.request.build_opener(NoFollow)
    for url, where in (
        (f"{mirror.url}/{TFHUB.split('://')[1]}", "/hubs/kaggle/api/models/google/"),
        (f"{mirror.url}/api/weightswarm/aliases?url={TFHUB}", "/hubs/kaggle/api/models/"),
        (f"{mirror.url}/{ZOO}/model/mobilenetv2-12.onnx",
         "/onnx/mobilenet/resolve/main/model/mobilenetv2-12.onnx"),
    ):
        with pytest.raises(urllib.error.HTTPError) as answer:
            opener.open(url, timeout=10)
        assert answer.value.code == 302 and answer.value.headers["Location"].startswith(where)
    table = json.loads(urllib.request.urlopen(f"{mirror.url}/api/weightswarm/aliases",
                                              timeout=10).read())
    assert "huggingface:model:old-org/tiny" in table["repos"]
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{mirror.url}/example.com/nothing", timeout=10)
    assert missing.value.code == 404
