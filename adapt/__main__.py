"""`python -m adapt` is the `adapt` command (also what `torchrun -m adapt` starts)."""

from adapt.cli import main

main()
