"""kgc-kd: distilling PLM-based knowledge graph completion models with PyTorch Lightning."""

__version__ = "0.1.0"
