"""transformers loads the sample model through HF_ENDPOINT, then offline from the cache alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import (
    SAMPLE_REPO,
    free_port,
    hf_env,
    make_config,
    run_py,
    sample_model_dir,
)
from mirror.catalog import Catalog
from mirror.importer import Importer
from peer.store import BlobStore

LOAD = f"""
import json
from transformers import AutoConfig, AutoTokenizer
config = AutoConfig.from_pretrained({SAMPLE_REPO!r})
tokenizer = AutoTokenizer.from_pretrained({SAMPLE_REPO!r})
from huggingface_hub import hf_hub_download
weights = hf_hub_download({SAMPLE_REPO!r}, "model.safetensors")
from safetensors import safe_open
with safe_open(weights, framework="numpy") as f:
    shape = list(f.get_tensor("embeddings.word_embeddings.weight").shape)
print(json.dumps({{"model_type": config.model_type, "ids": tokenizer("hello world")["input_ids"],
                   "weights": weights, "shape": shape}}))
"""


@pytest.fixture
def sample_mirror(home, serve):
    config = make_config(home)
    catalog = Catalog(config.catalog_path)
    Importer(catalog, BlobStore(config.store_dir)).import_path(sample_model_dir(),
                                                               repo_id=SAMPLE_REPO)
    catalog.close()
    return serve(config)


def test_transformers_loads_through_the_mirror_then_offline(sample_mirror, tmp_path):
    cache = tmp_path / "hub"
    online = run_py(LOAD, hf_env(sample_mirror.url, cache))
    assert online.returncode == 0, online.stderr[-3000:]
    first = json.loads(online.stdout.strip().splitlines()[-1])
    assert first["model_type"] == "bert"
    assert first["ids"] == [101, 7592, 2088, 102], "BERT's uncased vocab for 'hello world'"
    assert first["shape"] == [30522, 384]
    packaged = (sample_model_dir() / "model.safetensors").read_bytes()
    assert Path(first["weights"]).read_bytes() == packaged, "weights must be byte-identical"

    # Offline, pointed at a port nobody listens on: everything comes from the cache.
    dead = f"http://127.0.0.1:{free_port()}"
    offline = run_py(LOAD, hf_env(dead, cache, HF_HUB_OFFLINE="1"))
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert json.loads(offline.stdout.strip().splitlines()[-1]) == first
