"""The ``kos-see`` command line (Typer and Rich)."""
