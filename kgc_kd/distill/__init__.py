"""Distillation loss terms: pure functions on tensors (and the small generator block), no Lightning."""
