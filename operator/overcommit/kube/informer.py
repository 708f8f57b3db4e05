"""List, then watch from the list's resourceVersion, and relist when the watch expires (410).

The store sees every object once per (re)list and then each change; after a relist it is told
which names still exist, so objects deleted while no watch was open disappear too. Lists are
paged, so a relist of thousands of node states never holds them all in memory at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from overcommit.kube.backoff import retry_delay
from overcommit.kube.client import ApiError, KubeClient

log = logging.getLogger("overcommit.kube")

JSON = dict[str, Any]
PAGE = 500
WATCH_SECONDS = 300
# Relist after a failure: a random wait from 0.5 s up to a ceiling of 1 s that doubles with
# each failure in a row, up to 8 s (overcommit.kube.backoff).
RETRY_BASE_S = 1.0
RETRY_CAP_S = 8.0


class Store(Protocol):
    def apply(self, event_type: str, obj: JSON) -> None:
        """ADDED, MODIFIED or DELETED ``obj``."""

    def retain(self, names: set[str]) -> None:
        """After a relist: forget every object not in ``names``."""


class Expired(Exception):
    """The watch's resourceVersion is too old (HTTP 410): relist."""


class Informer:
    def __init__(self, api: KubeClient, path: str, store: Store,
                 list_accept: str = "application/json",
                 watch_accept: str = "application/json", page: int = PAGE,
                 on_error: Callable[[], None] = lambda: None) -> None:
        self.api, self.path, self.store, self.page = api, path, store, page
        self.on_error = on_error
        self.list_accept, self.watch_accept = list_accept, watch_accept
        self.synced = asyncio.Event()
        self.events = 0  # watch events received, for health and tests

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                version = await self.relist()
                self.synced.set()
                failures = 0
                await self.follow(version)
            except Expired:
                log.info("watch of %s expired: relisting", self.path)
            except ApiError as exc:
                if exc.status == 410:
                    continue  # expired before the first event: relist at once
                failures = await self._back_off(failures, exc)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                failures = await self._back_off(failures, exc)

    async def _back_off(self, failures: int, exc: Exception) -> int:
        self.on_error()
        delay = retry_delay(failures + 1, RETRY_BASE_S, RETRY_CAP_S)
        log.warning("list/watch of %s failed, retrying in %.1fs: %s", self.path, delay, exc)
        await asyncio.sleep(delay)
        return failures + 1

    async def relist(self) -> str:
        names: set[str] = set()
        params: JSON = {"limit": self.page}
        while True:
            page = await self.api.get(self.path, params, self.list_accept)
            for obj in page.get("items") or []:
                names.add(obj["metadata"]["name"])
                self.store.apply("ADDED", obj)
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                self.store.retain(names)
                return str(meta.get("resourceVersion", ""))
            params = {"limit": self.page, "continue": meta["continue"]}

    async def follow(self, version: str) -> None:
        """Watch from ``version`` for as long as the server keeps answering."""
        while True:
            params = {"resourceVersion": version, "allowWatchBookmarks": "true",
                      "timeoutSeconds": WATCH_SECONDS}
            async for event in self.api.watch(self.path, params, self.watch_accept):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired()
                    raise ApiError(int(obj.get("code") or 500), str(obj.get("message")),
                                   f"watch {self.path}")
                version = str((obj.get("metadata") or {}).get("resourceVersion", version))
                if kind != "BOOKMARK":
                    self.events += 1
                    self.store.apply(str(kind), obj)
