"""The ``pipesim`` command's entry point (also ``python -m pipesim``).

It imports nothing heavy before it has made Ctrl-C work: a command started with SIGINT ignored (a background
job of a non-interactive shell) would otherwise ignore Ctrl-C until the command line is imported, and a Ctrl-C
during that import would end in Python's traceback rather than one line.
"""

import signal
import sys
import threading


def main() -> int:
    """Run the ``pipesim`` command line on ``sys.argv``; its exit status."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        from pipesim.cli import main as command_line
    except KeyboardInterrupt:
        print("pipesim: interrupted", file=sys.stderr)
        return 130
    return command_line()


if __name__ == "__main__":
    raise SystemExit(main())
