"""``python -m cxrfa.cli``: the same as the ``cxrfa`` console script."""

from cxrfa.cli import main

main()
