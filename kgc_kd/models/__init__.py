"""Models: encoders, the SimKGC bi-encoder and its contrastive objective (no Lightning here)."""

from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.contrastive import contrastive_logits, infonce_loss

__all__ = ["BiEncoder", "contrastive_logits", "infonce_loss"]
