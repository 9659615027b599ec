"""`python -m parallel_engine` is the `parallel-engine` command."""

from parallel_engine.entry import main

main()
