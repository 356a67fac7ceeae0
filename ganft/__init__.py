"""ganft: does GAN-generated data make a small-data classifier better? Measured, with evidence."""

__version__ = "0.1.0"
