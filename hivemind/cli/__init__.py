"""The `hivemind` command line (typer): `cli/app.py` holds the app and its study commands,
`cli/imports.py` the import commands, `cli/service.py` serve and the scan commands, `cli/common.py`
what they share (store options, one-line errors). `hivemind.cli:main` is the console script.
"""

from hivemind.cli.app import app, main

__all__ = ["app", "main"]
