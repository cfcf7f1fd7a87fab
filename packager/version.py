"""packager's version: the one place it is written (pyproject.toml's `version` names the same release), in a
module of its own so that the stages, the manifest and the reports read it without importing the package's
front door (packager/__init__.py, which names the API)."""

__version__ = "0.1.0"
