"""`python -m gatebot`: the same as the `gatebot` command."""

from gatebot.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
