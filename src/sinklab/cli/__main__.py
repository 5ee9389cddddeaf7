"""`python -m sinklab.cli`."""

from sinklab.cli import main

main()
