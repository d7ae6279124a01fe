"""One module per CLI sub-command; each defines `register(app: typer.Typer)`."""
