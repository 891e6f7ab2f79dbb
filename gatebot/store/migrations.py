"""The schema, as an append-only list of migrations; the database's user_version counts them.

Never edit a migration that has shipped: add a new one.
"""

MIGRATIONS: list[str] = [
    # 1: deployments and their step logs
    """
    CREATE TABLE deployments (
        id INTEGER PRIMARY KEY,
        project TEXT NOT NULL,
        version INTEGER NOT NULL,
        commit_sha TEXT,
        commit_message TEXT,
        image TEXT,
        container TEXT,
        color TEXT CHECK (color IN ('blue', 'green')),
        port INTEGER,
        status TEXT NOT NULL
            CHECK (status IN ('PENDING', 'DEPLOYING', 'ACTIVE', 'ROLLED_BACK', 'FAILED')),
        error TEXT,
        failed_stage TEXT,
        trigger TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        activated_at TEXT,
        finished_at TEXT,
        UNIQUE (project, version)
    );
    CREATE UNIQUE INDEX deployments_one_active ON deployments (project) WHERE status = 'ACTIVE';
    CREATE INDEX deployments_status ON deployments (status);
    CREATE TABLE deployment_steps (
        id INTEGER PRIMARY KEY,
        deployment_id INTEGER NOT NULL REFERENCES deployments (id),
        at TEXT NOT NULL,
        stage TEXT NOT NULL,
        message TEXT NOT NULL,
        output TEXT,
        duration REAL
    );
    CREATE INDEX deployment_steps_deployment ON deployment_steps (deployment_id, id)
    """,
    # 2: the durable job queue and the webhook deliveries seen (for de-duplication)
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        project TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('deploy', 'rollback')),
        sha TEXT,
        target TEXT,
        state TEXT NOT NULL CHECK (state IN
            ('queued', 'running', 'succeeded', 'failed', 'superseded', 'cancelled')),
        trigger TEXT NOT NULL,
        delivery_id TEXT,
        context TEXT NOT NULL DEFAULT '{}',
        deployment_id INTEGER REFERENCES deployments (id),
        error TEXT,
        superseded_by INTEGER REFERENCES jobs (id),
        retry_of INTEGER REFERENCES jobs (id),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT
    );
    CREATE INDEX jobs_state ON jobs (state, project);
    CREATE INDEX jobs_project ON jobs (project, id);
    CREATE TABLE deliveries (
        forge TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        event TEXT NOT NULL,
        outcome TEXT NOT NULL,
        received_at TEXT NOT NULL,
        PRIMARY KEY (forge, delivery_id)
    )
    """,
    # 3: API tokens (only a hash of each is kept) and the audit trail of API calls that change
    # something
    """
    CREATE TABLE tokens (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        lookup TEXT NOT NULL UNIQUE,
        hash TEXT NOT NULL,
        scope TEXT NOT NULL CHECK (scope IN ('read', 'deploy')),
        created_at TEXT NOT NULL,
        last_used_at TEXT,
        revoked_at TEXT
    );
    CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        project TEXT,
        job_id INTEGER REFERENCES jobs (id),
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_at ON audit (at)
    """,
    # 4: a delivery's body digest, so a captured delivery replayed under a new id is a duplicate
    """
    ALTER TABLE deliveries ADD COLUMN body_sha256 TEXT;
    CREATE UNIQUE INDEX deliveries_body ON deliveries (forge, body_sha256)
        WHERE body_sha256 IS NOT NULL
    """,
    # 5: the `waiting` job state (a release gate) and what a waiting job waits for (`gate`,
    # JSON). SQLite cannot change a CHECK constraint: the table is rebuilt (migrate() turns
    # foreign keys off around it, as SQLite's documented procedure asks).
    """
    CREATE TABLE jobs_new (
        id INTEGER PRIMARY KEY,
        project TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('deploy', 'rollback')),
        sha TEXT,
        target TEXT,
        state TEXT NOT NULL CHECK (state IN
            ('waiting', 'queued', 'running', 'succeeded', 'failed', 'superseded', 'cancelled')),
        trigger TEXT NOT NULL,
        delivery_id TEXT,
        context TEXT NOT NULL DEFAULT '{}',
        deployment_id INTEGER REFERENCES deployments (id),
        error TEXT,
        superseded_by INTEGER REFERENCES jobs (id),
        retry_of INTEGER REFERENCES jobs (id),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        gate TEXT
    );
    INSERT INTO jobs_new (id, project, kind, sha, target, state, trigger, delivery_id, context,
        deployment_id, error, superseded_by, retry_of, created_at, updated_at, started_at,
        finished_at)
        SELECT id, project, kind, sha, target, state, trigger, delivery_id, context,
        deployment_id, error, superseded_by, retry_of, created_at, updated_at, started_at,
        finished_at FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_new RENAME TO jobs;
    CREATE INDEX jobs_state ON jobs (state, project);
    CREATE INDEX jobs_project ON jobs (project, id)
    """,
    # 6: the jobs a batch of new ones superseded, found without a scan (JobQueue's
    # listen_to_others reads them for every batch an intake process commits)
    """
    CREATE INDEX jobs_superseded_by ON jobs (superseded_by) WHERE superseded_by IS NOT NULL
    """,
]
