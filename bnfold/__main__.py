"""``python -m bnfold`` is the ``bnfold`` command."""

from bnfold.cli import main

if __name__ == "__main__":
    main()
