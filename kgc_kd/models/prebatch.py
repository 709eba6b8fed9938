"""SimKGC's pre-batch negatives: the entity vectors of the last k batches, reused as extra negatives.

Unlike SimKGC, empty slots (before k batches have been seen) are masked out rather than filled with
random unit vectors, so the first steps are not trained against noise.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PreBatchBuffer(nn.Module):
    def __init__(self, num_batches: int, batch_size: int, dim: int):
        super().__init__()
        size = num_batches * batch_size
        self.batch_size = batch_size
        self.register_buffer("vectors", torch.zeros(size, dim), persistent=False)
        self.register_buffer("triples", torch.full((size, 3), -1, dtype=torch.long), persistent=False)
        self.register_buffer("filled", torch.zeros(size, dtype=torch.bool), persistent=False)
        self.next_slot = 0

    def __len__(self) -> int:
        return len(self.vectors)

    @torch.no_grad()
    def push(self, tail_vectors: Tensor, triples: Tensor) -> None:
        """Overwrite the oldest batch slot (FIFO); the vectors are detached (no gradient to old batches)."""
        n = tail_vectors.shape[0]
        if n != self.batch_size:
            raise ValueError(f"pre-batch negatives need a constant batch size {self.batch_size}, got {n}")
        s = self.next_slot * n
        self.vectors[s:s + n] = tail_vectors.detach().to(self.vectors.dtype)
        self.triples[s:s + n] = triples
        self.filled[s:s + n] = True
        self.next_slot = (self.next_slot + 1) % (len(self) // n)
