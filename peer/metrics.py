"""Prometheus metrics, the same way in every service of ours (`/metrics`)."""

from __future__ import annotations

from collections.abc import Hashable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class Children:
    """A labelled metric's children, kept: `labels()` costs a lock and a lookup in
    prometheus_client on every call, and a busy service counts every request."""

    def __init__(self, metric):
        self.metric = metric
        self._children: dict[Hashable, object] = {}

    def __call__(self, *values: str):
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


def metrics_response(registry: CollectorRegistry) -> web.Response:
    return web.Response(body=generate_latest(registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
