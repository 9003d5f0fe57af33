"""``python -m bnfold`` is the ``bnfold`` command."""

from bnfold.cli import entry

if __name__ == "__main__":
    entry()
