"""ganft: does GAN-generated data make a small-data classifier better? Measured, with evidence."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ganft")  # pyproject.toml is the one place the version is written
except PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"
