"""SoftHebb: Hebbian deep learning without feedback."""

__version__ = "0.1.0"
