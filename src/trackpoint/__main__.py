"""`python -m trackpoint` runs the CLI."""

from trackpoint.cli import main

main()
