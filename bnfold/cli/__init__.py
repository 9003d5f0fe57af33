"""The command line: a Typer app (``app``), one module per command, options, rendering, and the
JSON documents and schema of ``--json``. It parses, calls the API, and renders what it returns."""

from bnfold.cli.app import app, entry, main

__all__ = ["app", "entry", "main"]
