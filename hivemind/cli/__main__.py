"""`python -m hivemind.cli ...`: the same as the `hivemind` console script."""

from hivemind.cli.app import main

main()
