"""torchgraft's version, in the lowest layer so that every layer may record it."""

__version__ = "0.1.0"
