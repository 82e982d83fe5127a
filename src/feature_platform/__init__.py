"""feature-platform: versioned feature contracts in Git, built into versioned Parquet, served by Feast."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("feature-platform")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
