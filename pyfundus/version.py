"""The package version, in a module of its own: any module can read it without importing the package's API."""

__version__ = "0.1.0"  # keep equal to pyproject.toml's version (tests/test_imports.py checks)
