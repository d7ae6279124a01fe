"""The data layer, by area; no SQL lives outside this package.

- models: the schema; engine: engines, sessions, transactions; migrate: Alembic;
- catalogue: users and items (external ids <-> keys, the item upsert rule, item reads);
- events: interactions, impressions, and logged traffic (`LoggedRequest`) for training/replay;
- runs: batch recommendation runs and job_runs rows;
- registry: model versions (promotion, rollback); apikeys: API key hashes;
- bulk: the one bulk-load path (staging tables + one set-based merge);
- testing: helpers for tests.

Every function that touches the database takes the engine (or a connection) it runs on.
"""
