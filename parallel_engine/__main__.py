"""`python -m parallel_engine` is the `parallel-engine` command."""

from parallel_engine.cli import main

main()
