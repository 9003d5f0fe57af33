"""The release of bnfold (the same as pyproject.toml's ``version``; a test holds them together).
A module of its own so that any layer can name it without importing the package's face."""

__version__ = "0.1.0"
