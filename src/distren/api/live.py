"""Server-sent events for the dashboard: a page's live parts, sent again whenever they change.

A stream wakes when the lifecycle's bus publishes a change (the bus calls from the committing
thread; the stream is woken with ``call_soon_threadsafe``, which never blocks), or every few
seconds for what the bus does not carry (peers' state). It then asks ``snapshot`` in a worker
thread (SQLite is never touched on the event loop) and sends it only if it differs from the last
one sent (a snapshot may itself leave out what it sent before). Bursts coalesce: a stream sends at most one update per MIN_INTERVAL, always the
newest, so a slow reader never makes anyone queue up old updates. At most MAX_CLIENTS streams
are open at once."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from ..bus import Bus
from ..errors import DistrenError

log = logging.getLogger("distren.api.live")

MAX_CLIENTS = 32
MIN_INTERVAL = 0.3  # seconds between two updates of one stream
POLL = 5.0  # seconds a stream waits without a bus change before looking again
KEEPALIVE = 15.0  # seconds of silence before a comment line (proxies close silent connections)

HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
           (b"x-content-type-options", b"nosniff"), (b"x-accel-buffering", b"no")]


class Live:
    def __init__(self, bus: Bus):
        self.bus = bus
        self.clients = 0

    def full(self) -> bool:
        return self.clients >= MAX_CLIENTS

    def stream(self, snapshot: Callable[[], dict], first: dict) -> EventStream:
        """A response sending ``first``, then ``snapshot()`` whenever it changes (a DistrenError
        from it ends the stream with an ``end`` event saying why: signed out, job deleted...)."""
        self.clients += 1  # on the event loop: no lock needed; the response gives it back
        return EventStream(self, snapshot, first)


class EventStream(Response):
    def __init__(self, live: Live, snapshot: Callable[[], dict], first: dict):
        super().__init__(status_code=200)  # FastAPI expects a Response's attributes; __call__ sends
        self.live = live
        self.snapshot = snapshot
        self.first = first

    async def __call__(self, scope, receive, send) -> None:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def on_change(_change) -> None:  # on the committing thread
            if not wake.is_set():
                try:
                    loop.call_soon_threadsafe(wake.set)
                except RuntimeError:  # the loop is closing
                    pass

        unsubscribe = self.live.bus.subscribe(on_change)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            pump = asyncio.ensure_future(self._pump(send, wake))
            gone = asyncio.ensure_future(_disconnected(receive))
            try:
                await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pump, gone):
                    task.cancel()
                await asyncio.gather(pump, gone, return_exceptions=True)
        finally:
            unsubscribe()
            self.live.clients -= 1

    async def _pump(self, send, wake: asyncio.Event) -> None:
        last, sent_at, data = None, time.monotonic(), self.first
        while True:
            wake.clear()
            if data is None:
                try:
                    data = await run_in_threadpool(self.snapshot)
                except DistrenError as e:
                    await _event(send, "end", json.dumps({"error": str(e)}), more=False)
                    return
            text = json.dumps(data, separators=(",", ":"))
            if text != last:
                await _event(send, "update", text)
                last, sent_at = text, time.monotonic()
            elif time.monotonic() - sent_at >= KEEPALIVE:
                await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
                sent_at = time.monotonic()
            try:
                await asyncio.wait_for(wake.wait(), timeout=POLL)
            except asyncio.TimeoutError:
                pass
            await asyncio.sleep(MIN_INTERVAL)
            data = None


async def _event(send, name: str, data: str, more: bool = True) -> None:
    # JSON has no raw newlines, so one data line carries it whole.
    await send({"type": "http.response.body", "body": f"event: {name}\ndata: {data}\n\n".encode(),
                "more_body": more})


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
