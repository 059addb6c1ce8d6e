import os
import tempfile

# helpers imports no Hugging Face code, so the settings below are in place before the stock
# client, which reads them at import time, is first imported.
from helpers import (
    BT_TEST_SETTINGS,
    HF_TEST_SETTINGS,
    PEER_TEST_SETTINGS,
    make_config,
    start_mirror,
    start_tracker,
    without_hf_settings,
)

_clean = without_hf_settings(os.environ)
os.environ.clear()
os.environ.update(_clean, **HF_TEST_SETTINGS,
                  HF_HOME=tempfile.mkdtemp(prefix="weightswarm-hf-home-"))
os.environ.pop("WEIGHTSWARM_HOME", None)
# Mirrors that tests start as commands inherit these.
os.environ.update({f"WEIGHTSWARM_MIRROR_{k.upper()}": str(v) for k, v in BT_TEST_SETTINGS.items()})
os.environ.update({f"WEIGHTSWARM_PEER_{k.upper()}": str(v) for k, v in PEER_TEST_SETTINGS.items()})

import pytest  # noqa: E402

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
def tracker():
    """Our tracker on 127.0.0.1:0, announces every 2 s (BitTorrent tests)."""
    from tracker.config import TrackerConfig

    running = start_tracker(TrackerConfig(port=0, interval=2, min_interval=1, peer_ttl=60))
    yield running
    running.stop()


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
