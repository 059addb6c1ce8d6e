"""Labelled metrics keep to their vocabularies (issue 14)."""

from __future__ import annotations

import enum

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from peer.metrics import Children


class Way(enum.StrEnum):
    IN = "in"
    OUT = "out"


def test_a_label_value_outside_its_vocabulary_is_refused_and_adds_no_series():
    registry = CollectorRegistry()
    children = Children(Counter("things", "Things", ["way", "result"], registry=registry),
                        Way, ("ok", "refused"))
    children(Way.IN, "ok").inc()
    children("out", "refused").inc()  # a plain string of the vocabulary is one of it
    with pytest.raises(ValueError, match="vocabulary"):
        children("17", "ok")
    with pytest.raises(ValueError, match="vocabulary"):
        children(Way.IN, "made up")
    text = generate_latest(registry).decode()
    assert 'things_total{result="ok",way="in"} 1.0' in text
    assert 'way="17"' not in text and 'result="made up"' not in text
    assert text.count("things_total{") == 2, "two series: the two calls in the vocabulary"
