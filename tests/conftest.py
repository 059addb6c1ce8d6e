import os
import tempfile

# The stock client reads its settings at import time: set them before anything imports it.
# Short timeouts keep error-path tests fast (PROTOCOLS.md section 5); no token, no telemetry.
for _key in [k for k in os.environ if k.startswith("HF_") or k.startswith("TRANSFORMERS_")]:
    del os.environ[_key]
os.environ.update(
    HF_HOME=tempfile.mkdtemp(prefix="weightswarm-hf-home-"),
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_UPDATE_CHECK="1",
    HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
    HF_HUB_ETAG_TIMEOUT="5",
    HF_HUB_DOWNLOAD_TIMEOUT="10",
    TOKENIZERS_PARALLELISM="false",
)
os.environ.pop("WEIGHTSWARM_HOME", None)

import pytest  # noqa: E402

from helpers import make_config, start_mirror  # noqa: E402
from mirror.catalog import Catalog  # noqa: E402
from peer.store import BlobStore  # noqa: E402


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def config(home):
    return make_config(home)


@pytest.fixture
def catalog(config):
    c = Catalog(config.catalog_path)
    yield c
    c.close()


@pytest.fixture
def store(config):
    return BlobStore(config.store_dir)


@pytest.fixture
def serve():
    """serve(config) starts a real mirror on 127.0.0.1:0; all are stopped after the test."""
    started = []

    def _serve(config):
        running = start_mirror(config)
        started.append(running)
        return running

    yield _serve
    for running in started:
        running.stop()
