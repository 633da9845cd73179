"""Persistence: one SQLite database (WAL) plus files under the server's data folder.

All SQL lives in this package, one module per concern (db, migrations, users, jobs, frames,
leases, peers, announcements, nonces, trust); :class:`Store` is all of them on one connection and one lock. Schema changes
are numbered migrations, applied in order at start and recorded in ``PRAGMA user_version``. Which state change to make is decided by
:mod:`distren.lifecycle`, inside a transaction it opens here (:meth:`Store.tx`); the small
functions it calls write each change with its reason to the ``events`` table in that same
transaction, so the record and the state can never disagree - not even after SIGKILL.

Layout of the data folder::

    state.sqlite            jobs, frames, users, events
    admin.token             the first admin's token (mode 0600)
    jobs/ID/seed.tar        the job's bundle as submitted (distrenjob.xml + scene/)
    jobs/ID/scene/          the scene, unpacked once
    jobs/ID/frames/FID.tar  each finished frame's files (the seed's frame packaging)
    jobs/ID/logs/FID.log    each frame's renderer log, all attempts
    jobs/ID/result.tar      the rebundled finished frames
"""

from __future__ import annotations

from .announcements import Announcements
from .db import Database
from .frames import FrameRow, Frames
from .jobs import Event, JobRow, Jobs, no_such_job
from .leases import Leases
from .migrations import MIGRATIONS
from .nonces import Nonces
from .peers import Peers
from .trust import Trust
from .users import Users

__all__ = ["MIGRATIONS", "Event", "FrameRow", "JobRow", "Store", "no_such_job"]


class Store(Database, Users, Jobs, Frames, Leases, Peers, Announcements, Nonces, Trust):
    """One data folder's database: the connection and lock of :class:`Database`, and the SQL of
    each concern."""
