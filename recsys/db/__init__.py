"""The data layer: schema (models), engines/sessions (engine), migrations (migrate) and the
small access functions every other stage uses (repository). No SQL lives outside this package."""
