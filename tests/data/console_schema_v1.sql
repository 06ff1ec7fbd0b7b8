-- The console database as schema version 1 wrote it (app/_db.py before version 2): for migration tests.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS nodes (
    ref INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL UNIQUE,
    name TEXT, tier TEXT, address TEXT, source TEXT,
    state TEXT, state_reason TEXT, state_since_ms INTEGER,
    info_json TEXT, first_seen_ms INTEGER, last_seen_ms INTEGER,
    forgotten INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS boots (
    ref INTEGER PRIMARY KEY,
    node INTEGER NOT NULL REFERENCES nodes(ref),
    boot_id TEXT NOT NULL,
    first_seen_ms INTEGER,
    UNIQUE (node, boot_id)
);
CREATE TABLE IF NOT EXISTS stages (
    node_id TEXT NOT NULL, stage_id TEXT NOT NULL,
    version TEXT, sha256 TEXT, state TEXT, previous_version TEXT, next_hop TEXT,
    pipeline TEXT, deployment_id TEXT, updated_ms INTEGER,
    PRIMARY KEY (node_id, stage_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    pipeline TEXT, pipeline_path TEXT, operator TEXT, host TEXT,
    started_ms INTEGER, finished_ms INTEGER,
    status TEXT, reason TEXT, plan_json TEXT
);
CREATE TABLE IF NOT EXISTS deployment_steps (
    id INTEGER PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments(id),
    ts_ms INTEGER, node_id TEXT, stage_id TEXT, step TEXT, status TEXT, message TEXT
);
CREATE INDEX IF NOT EXISTS deployment_steps_deployment ON deployment_steps (deployment_id);
CREATE TABLE IF NOT EXISTS telemetry (
    node INTEGER NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
    stage TEXT NOT NULL,
    cpu_percent REAL, rss_bytes INTEGER, power_watts REAL, power_source TEXT, power_measured INTEGER,
    energy_joules_total REAL, energy_joules REAL, backlog INTEGER,
    requests_total INTEGER, inferences_total INTEGER, escalated_total INTEGER, forwarded_total INTEGER,
    dropped_total INTEGER, shed_total INTEGER, queued_total INTEGER, delivered_total INTEGER,
    overflow_total INTEGER, provisional_total INTEGER, errors_total INTEGER,
    inferences INTEGER, escalated INTEGER, dropped INTEGER, errors INTEGER, shed INTEGER, overflow INTEGER,
    inferences_per_s REAL, escalation_rate REAL,
    latency_p50_ms REAL, latency_p95_ms REAL, latency_p99_ms REAL, queue_depth INTEGER, link_state TEXT,
    stage_energy_joules_total REAL, energy_per_inference_j REAL
);
-- One index only (it costs ~15 % of the table): time-range queries go through it with
-- "node IN (SELECT ref FROM nodes)", a short list of index ranges.
CREATE INDEX IF NOT EXISTS telemetry_node_ts ON telemetry (node, ts_ms);
CREATE TABLE IF NOT EXISTS telemetry_rollup_1m (
    node INTEGER NOT NULL, stage TEXT NOT NULL, minute_ms INTEGER NOT NULL,
    samples INTEGER,
    inferences INTEGER, escalated INTEGER, dropped INTEGER, errors INTEGER, shed INTEGER, overflow INTEGER,
    escalation_rate REAL,
    latency_p95_ms_avg REAL, latency_p95_ms_max REAL, latency_p99_ms_max REAL, queue_depth_max INTEGER,
    cpu_percent_avg REAL, cpu_percent_max REAL, power_watts_avg REAL, power_watts_max REAL,
    energy_joules REAL, backlog_max INTEGER,
    PRIMARY KEY (node, stage, minute_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS telemetry_rollup_minute ON telemetry_rollup_1m (minute_ms);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL,
    node_id TEXT, message TEXT NOT NULL, detail_json TEXT
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts_ms);
INSERT INTO meta (key, value) VALUES ('schema_version', '1');
