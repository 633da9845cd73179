"""The schema, as numbered migrations: applied in order at start, recorded in ``PRAGMA
user_version``. Append only; a released migration never changes."""

MIGRATIONS: list[str] = [
    # 1: the single-server schema.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        token_sha256 TEXT NOT NULL UNIQUE,
        admin INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    );
    -- AUTOINCREMENT: SQLite then never hands out an id twice, even after deletes.
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        submitter TEXT NOT NULL,
        type TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        jobfile BLOB NOT NULL,
        upload_key TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        UNIQUE (submitter, upload_key)
    );
    CREATE TABLE frames (
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        frame_id INTEGER NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        server TEXT,
        files TEXT NOT NULL DEFAULT '[]',
        started REAL,
        finished REAL,
        PRIMARY KEY (job_id, frame_id)
    );
    CREATE INDEX frames_by_state ON frames(state, job_id, frame_id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        job_id INTEGER NOT NULL,
        frame_id INTEGER,
        old TEXT NOT NULL,
        new TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX events_by_job ON events(job_id, id);
    """,
    # 2: federation. Peers are pinned by name and key; announcements are the jobs of all servers
    # this one has heard of; nonces keep signed requests from being replayed; a frame leased to
    # another server carries the time its lease runs out.
    """
    CREATE TABLE peers (
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        public_key TEXT NOT NULL,
        slots INTEGER,
        rendering TEXT NOT NULL DEFAULT '[]',
        last_heard REAL,
        added REAL NOT NULL
    );
    CREATE TABLE announcements (
        job TEXT PRIMARY KEY,
        origin TEXT NOT NULL,
        body TEXT NOT NULL,
        active INTEGER NOT NULL,
        received REAL NOT NULL
    );
    CREATE TABLE nonces (nonce TEXT PRIMARY KEY, expires REAL NOT NULL);
    CREATE INDEX nonces_by_expiry ON nonces(expires);
    ALTER TABLE frames ADD COLUMN lease_expires REAL;
    CREATE INDEX frames_by_lease ON frames(state, lease_expires);
    """,
    # 3: dependencies. One row per <dep>: the frame that waits, the URL it waits for, and what
    # is known of that target: 'waiting', 'done', or 'stuck' (failed, or blocked itself).
    """
    CREATE TABLE deps (
        job_id INTEGER NOT NULL,
        frame_id INTEGER NOT NULL,
        dep TEXT NOT NULL,
        target_state TEXT NOT NULL DEFAULT 'waiting',
        PRIMARY KEY (job_id, frame_id, dep)
    );
    CREATE INDEX deps_by_target ON deps(dep, target_state);
    """,
    # 4: revoking a user. The row stays, so its name is never handed to someone else (its jobs
    # keep naming it as their submitter); a revoked user's token matches nothing.
    """
    ALTER TABLE users ADD COLUMN revoked REAL;
    CREATE INDEX jobs_by_submitter ON jobs(submitter, id);
    """,
    # 5: fair leases. A lease carries the renderer's request id (a lost answer is recovered by
    # asking again with it); each frame a peer failed or let run out is remembered per job, and a
    # peer that reaches the blocklist threshold on a job is block-listed for it.
    """
    ALTER TABLE frames ADD COLUMN lease_request TEXT;
    CREATE INDEX frames_by_request ON frames(job_id, server, lease_request) WHERE lease_request IS NOT NULL;
    CREATE TABLE lease_failures (
        job_id INTEGER NOT NULL,
        frame_id INTEGER NOT NULL,
        server TEXT NOT NULL,
        at REAL NOT NULL,
        why TEXT NOT NULL
    );
    CREATE INDEX lease_failures_by_server ON lease_failures(job_id, server, frame_id);
    CREATE TABLE blocklist (
        job_id INTEGER NOT NULL,
        server TEXT NOT NULL,
        at REAL NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (job_id, server)
    );
    """,
    # 6: verified results. What this server, as an origin, knows of each renderer's frames: how
    # many it checked and found right, and when and why it stopped trusting it (NULL: it trusts it).
    """
    CREATE TABLE peer_trust (
        name TEXT PRIMARY KEY,
        checked INTEGER NOT NULL DEFAULT 0,
        untrusted REAL,
        reason TEXT NOT NULL DEFAULT ''
    );
    """,
    # 7: announcements that expire unless re-signed, and a counter of changes, so a peer's sync
    # asks only for what changed. Records kept from before live a day more (their origins re-sign).
    """
    ALTER TABLE announcements ADD COLUMN expires REAL;
    ALTER TABLE announcements ADD COLUMN heard REAL;
    ALTER TABLE announcements ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    UPDATE announcements SET expires = received + 86400, heard = received, seq = rowid;
    CREATE INDEX announcements_by_seq ON announcements(seq);
    CREATE INDEX announcements_by_origin ON announcements(origin, heard);
    """,
    # 8: the peering policy. A pinned server is 'accepted' (it may make requests), 'pending' (it
    # asked; an admin decides), 'known' (we said hello to it; it never asked us) or 'rejected'
    # (by an admin; its hellos are refused). Servers pinned before this were all peers.
    """
    ALTER TABLE peers ADD COLUMN status TEXT NOT NULL DEFAULT 'accepted';
    CREATE INDEX peers_by_status ON peers(status, added);
    """,
    # 9: steering. A job's priority orders the queue (higher first); a paused job is a state.
    """
    ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_by_priority ON jobs(state, priority, id);
    """,
    # 10: the leases a renderer holds, counted at every lease it asks for, found by its name
    # rather than among every frame being rendered.
    """
    CREATE INDEX frames_by_server ON frames(server, state);
    """,
]
