"""Models: the PLM loader, encoders, the SimKGC bi-encoder and its contrastive objective, students (no Lightning).
May import runtime, eval and data; never distill, lit or chain."""

from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.contrastive import contrastive_logits, infonce_loss

__all__ = ["BiEncoder", "contrastive_logits", "infonce_loss"]
