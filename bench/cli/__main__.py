"""``python -m bench.cli`` (what torchrun and the sweep launch)."""

from bench.cli import main

main()
