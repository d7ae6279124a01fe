"""The application: settings, database, ingestion, pipeline, API, CLI, evaluation, replay."""
