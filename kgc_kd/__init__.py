"""kgc-kd: distilling PLM-based knowledge graph completion models with PyTorch Lightning.
Layers, bottom to top: runtime, config, eval, data, models, distill, lit, callbacks, chain, entry points
(fit, predict, cli, compare, sweep); each imports only those below it (docs/architecture.md)."""

__version__ = "0.1.0"
