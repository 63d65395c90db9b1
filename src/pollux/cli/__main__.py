"""`python -m pollux.cli …` — the same as the `pollux` command."""

from pollux.cli import main

main()
