"""`python -m polyverse.cli ...`: the same as the `polyverse` command (used where no script is installed)."""

from . import main

main()
