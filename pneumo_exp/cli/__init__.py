"""The `pneumo-exp` command: its entry point, the one table of options, what each
subcommand does, and the servers it runs as one process group."""

from pneumo_exp.cli.main import main

__all__ = ["main"]
