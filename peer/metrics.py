"""Prometheus metrics, the same way in every service of ours (`/metrics`)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class Children:
    """A labelled metric's children, kept: `labels()` costs a lock and a lookup in
    prometheus_client on every call, and a busy service counts every request.

    `vocabularies`, one per label, are the only values each label may take: a value outside
    them raises ValueError instead of adding a series. Every value a client can influence must
    come from one, or each made-up value it sends is a new series for ever (issue 14)."""

    def __init__(self, metric, *vocabularies: Iterable):
        self.metric = metric
        self._children: dict[Hashable, object] = {}
        self._vocabularies = tuple(frozenset(map(str, v)) for v in vocabularies)

    def __call__(self, *values):
        child = self._children.get(values)
        if child is None:
            self._check(values)
            child = self._children[values] = self.metric.labels(*values)
        return child

    def _check(self, values: tuple) -> None:
        if not self._vocabularies:
            return
        if len(values) != len(self._vocabularies) or any(
                str(v) not in vocabulary
                for v, vocabulary in zip(values, self._vocabularies, strict=True)):
            raise ValueError(f"label values {values!r} are outside the metric's vocabulary")


def metrics_response(registry: CollectorRegistry) -> web.Response:
    return web.Response(body=generate_latest(registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
