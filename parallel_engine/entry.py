"""The `parallel-engine` command's first code, before the CLI's libraries load.

Loading typer, rich and yaml takes ~0.3 s; a Ctrl-C then was a KeyboardInterrupt traceback and
exit -2, a SIGTERM a silent kill (the seeded gce signal test: 2 of 80 tries). Both end here as
every interrupted command does: one line, exit 130, nothing done. SIGTERM keeps unwinding like
Ctrl-C afterwards, so a command without a handler of its own (status, down, ...) also exits 130
(README "Exit codes"); `run`, `debug` and `emulator` install their own.
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

from parallel_engine.errors import EXIT_INTERRUPTED  # light: the package's __init__ imports it anyway


def interrupt(signum: int, frame: object) -> NoReturn:
    """SIGTERM's handler: unwind like Ctrl-C, so `finally` blocks clean up (also cli.py's)."""
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, interrupt)
    try:
        from parallel_engine.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: parallel-engine stopped as it started; nothing was done\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
    cli_main()
