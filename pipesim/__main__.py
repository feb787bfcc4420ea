"""``python -m pipesim``: the same command line as the ``pipesim`` script."""

from pipesim.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
