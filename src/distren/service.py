"""The server, independent of HTTP: its settings, and the rooms it is made of, wired together
with only what each needs. The HTTP API (:mod:`distren.api`) and the CLI use it; no other
module does.

The rooms: :mod:`~distren.users` (who may do what), :mod:`~distren.jobs` (submit, cancel,
retry, delete, rebundle), :mod:`~distren.views` (read-only answers), :mod:`~distren.scheduling`
(slots), :mod:`~distren.peering` (hello, keys), :mod:`~distren.gossip` (announcements, sync), :mod:`~distren.origin` and
:mod:`~distren.renderer` (a lease's two sides). All state changes go through one
:class:`~distren.lifecycle.Lifecycle`, which publishes them on the :class:`~distren.bus.Bus`.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import fsutil, keys, sandbox, states, urls
from .bus import Bus
from .concurrency import CAP_PER_CORE, Governor
from .dashboard import Dashboard
from .errors import DistrenError
from .jobs import JobFiles, Jobs
from .lifecycle import Lifecycle
from .origin import Origin
from .gossip import ANNOUNCE_TTL, NEW_ORIGINS_PER_HOUR, Gossip
from .peering import DEFAULT_POLICY, Peering, check_address
from .previews import Previews
from .renderer import Renderer
from .scheduling import Scheduler
from .store import Store
from .transfer import Transport
from .users import Users
from .verification import FIRST, SHARE, Verifier
from .views import Views

log = logging.getLogger("distren")

MAX_ATTEMPTS = 3
# The most renders at once; without --slots the governor runs as many as keep the cores busy
# (see concurrency), and a light frame's POV-Ray is mostly asleep, so this is many per core.
DEFAULT_SLOTS = CAP_PER_CORE * (os.cpu_count() or 1)
# A dead renderer's frame is queued again within this (plus the reaper's 0.5 s); renewals come
# every third of it. Measured cost of one renewal on the origin: see docs/protocol.md §6.2.
DEFAULT_LEASE_TIMEOUT = 20.0
# Frames of one job a renderer may fail or let run out before it gets none of them (Flamenco's
# blocklist threshold).
DEFAULT_BLOCKLIST_THRESHOLD = 3


@dataclass
class Settings:
    name: str
    data: Path
    slots: int = DEFAULT_SLOTS  # renders at once: at most, or exactly when not adaptive
    adaptive: bool = True  # as many as the machine's idle CPU and free memory allow (no --slots)
    limits: sandbox.Limits = field(default_factory=sandbox.Limits)  # what one frame's render may use
    max_attempts: int = MAX_ATTEMPTS
    advertise: str = "http://127.0.0.1:8311"  # the address peers reach this server at
    peers: list[str] = field(default_factory=list)
    lease_timeout: float = DEFAULT_LEASE_TIMEOUT
    blocklist_threshold: int = DEFAULT_BLOCKLIST_THRESHOLD
    max_result_bytes: int = 2 * sandbox.GiB  # what a peer's frame upload may be and unpack to
    verify_first: int = FIRST  # a new renderer's frames checked, all of them
    verify_share: float = SHARE  # then this share of its frames
    announce_ttl: float = ANNOUNCE_TTL  # our records live this long unless re-signed (at a third left)
    new_origins_per_hour: int = NEW_ORIGINS_PER_HOUR  # unknown origins one relaying peer may introduce
    peering: str = DEFAULT_POLICY  # who may peer: open, approve (an admin accepts) or allow-list
    allow: list[str] = field(default_factory=list)  # names accepted on their own confirmed hello
    tls_ca: Path | None = None  # a CA (besides the system's) that peers' certificates may be signed by


class Server:
    def __init__(self, settings: Settings):
        s = self.settings = settings
        self.url = urls.ServerURL(urls.check_server_name(s.name))
        check_address(s.advertise)
        self.store = Store(s.data)
        self.bus = Bus()
        self.life = Lifecycle(self.store, self.bus)
        self.identity, rotation = keys.load(self.url.name, s.data)
        self.transport = Transport(self.identity, ca=s.tls_ca)
        wake = threading.Event()  # set when there may be work: idle slots look at once
        self.governor = Governor(s.slots, s.adaptive)
        self.jobfiles = JobFiles(self.store)
        self.users = Users(self.url, self.store, s.data / "admin.token")
        self.peering = Peering(self.identity, s.advertise, self.store, self.transport, wake.set, s.peering,
                               s.allow, rotation)
        # Two late-bound callables: gossip answers with what the slots render, and polls the
        # renderer's remote dependencies after each sync; both rooms are made after it.
        self.gossip = Gossip(self.peering, s.peers, self.store, self.transport, self.jobfiles, s.slots,
                             lambda: self.scheduler.rendering_now(), wake.set,
                             lambda: self.renderer.poll_remote_deps(), announce_ttl=s.announce_ttl,
                             new_origins_per_hour=s.new_origins_per_hour)
        self.renderer = Renderer(self.url.name, self.store, self.life, self.transport, s.data / "cache",
                                 self.peering.known_address,
                                 lambda address: self.peering.introduce(address, accept=False), wake.set,
                                 self.governor.capacity)
        self.jobs = Jobs(self.url, self.store, self.life, self.jobfiles, self.gossip.announce,
                         self.renderer.remote_frame_state, self.users.job_for,
                         lambda job_id: self.scheduler.stop_renders(job_id), wake.set)
        self.verifier = Verifier(self.url, self.store, self.life, self.jobfiles, s.limits, s.data / "work",
                                 s.verify_first, s.verify_share,
                                 lambda jf, frame, work: self.scheduler.place_dependencies(jf, frame, work))
        self.origin = Origin(self.url, self.store, self.life, self.jobfiles, s.lease_timeout, s.max_attempts,
                             s.limits, s.max_result_bytes, self.jobs.rebundle, self.verifier,
                             s.blocklist_threshold,
                             self.renderer.vouched, self.identity.sign)
        self.scheduler = Scheduler(self.url, self.store, self.life, self.jobfiles, self.renderer,
                                   self.jobs.rebundle, s.data, self.governor, s.limits, s.max_attempts, wake)
        self.views = Views(self.url, self.store, self.jobfiles, s.advertise, s.slots, self.scheduler.rendering_now,
                           self.verifier.trust)
        self.dashboard = Dashboard(self.url, self.store, self.jobfiles, s.advertise, s.slots,
                                   self.scheduler.rendering_now)
        self.previews = Previews(self.store, self.jobfiles, s.limits)
        self.bus.subscribe(self.scheduler.on_change)

    def start(self) -> None:
        name = self.store.get_meta("name")
        if name is None:
            self.store.set_meta("name", self.url.name)
        elif name != self.url.name:
            raise DistrenError(
                f"{self.settings.data} belongs to server {name!r}, not {self.url.name!r}: a server's name "
                f"never changes (its job URLs would break). Start it with --name {name} or use another --data."
            )
        if self.settings.slots > 0:
            sandbox.check()
        self.users.ensure_admin()
        for job_id, frame_id in self.life.recover(str(self.url)):
            log.info("requeued frame %s of job %s after restart", frame_id, job_id)
        for folder in ("work", "incoming", "outgoing"):
            shutil.rmtree(self.settings.data / folder, ignore_errors=True)
        for p in fsutil.remove_stale_temps(self.settings.data / "jobs"):
            log.info("removed %s, a write cut short by the last stop", p.name)
        for job_id in self.store.jobs_awaiting_rebundle():
            self.jobs.rebundle(job_id)
        self.origin.start()
        threading.Thread(target=self._start_peering, name="start-peering", daemon=True).start()
        for job in self.store.list_jobs():  # peers may have missed these while we were down
            if job.state not in (states.DONE, states.CANCELLED):
                self.gossip.announce(job.id, again=True)
        self.scheduler.start()

    def _start_peering(self) -> None:
        # Our hellos are confirmed by a call back to our address: say them once it answers.
        self.peering.wait_reachable(timeout=10)
        if self.peering.rotation:  # peers pinning the old key re-pin on our hello and its statement
            self.peering.tell_rotation()
        self.gossip.start()

    def stop(self) -> None:
        self.scheduler.stop()
        self.gossip.stop()
        self.origin.stop()
        self.transport.close()
        self.scheduler.join()
        self.store.close()
