"""SimKGC's pre-batch negatives: the entity vectors of the last k batches, reused as extra negatives.

Unlike SimKGC, empty slots (before k batches have been seen) are masked out rather than filled with
random unit vectors, so the first steps are not trained against noise.

The buffer takes its size, device and width from the first batch pushed into it: under DDP that is
the global batch (every rank pushes the same gathered vectors, so the buffers stay identical), on a
GPU it is allocated there once, and a module moved between devices before training carries no stale
copy. It is not part of checkpoints: a resumed stage refills it within k steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PreBatchBuffer(nn.Module):
    def __init__(self, num_batches: int):
        super().__init__()
        if num_batches < 1:
            raise ValueError(f"pre-batch negatives need at least one batch, got {num_batches}")
        self.num_batches = num_batches
        self.batch_size: int | None = None  # set by the first push
        self.register_buffer("vectors", None, persistent=False)
        self.register_buffer("triples", None, persistent=False)
        self.register_buffer("filled", None, persistent=False)
        self.next_slot = 0

    def __len__(self) -> int:
        return 0 if self.vectors is None else len(self.vectors)

    @property
    def empty(self) -> bool:
        """Nothing pushed yet: the step has no pre-batch columns (masked empty slots would add nothing)."""
        return self.vectors is None

    @torch.no_grad()
    def push(self, tail_vectors: Tensor, triples: Tensor) -> None:
        """Overwrite the oldest batch slot (FIFO); the vectors are detached (no gradient to old batches)."""
        n = tail_vectors.shape[0]
        if self.vectors is None:
            size, device = self.num_batches * n, tail_vectors.device
            self.batch_size = n
            self.vectors = torch.zeros(size, tail_vectors.shape[1], device=device)
            self.triples = torch.full((size, 3), -1, dtype=torch.long, device=device)
            self.filled = torch.zeros(size, dtype=torch.bool, device=device)
        if n != self.batch_size:
            raise ValueError(f"pre-batch negatives need a constant batch size {self.batch_size}, got {n}")
        s = self.next_slot * n
        self.vectors[s:s + n] = tail_vectors.detach().to(self.vectors.dtype)
        self.triples[s:s + n] = triples.to(self.triples.device)
        self.filled[s:s + n] = True
        self.next_slot = (self.next_slot + 1) % self.num_batches
