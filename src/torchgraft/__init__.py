"""torchgraft: declarative, reviewable transfer of tensors between PyTorch checkpoints."""

__version__ = "0.1.0"
