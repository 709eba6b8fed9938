"""Data layer: KGs from every supported source, text, tokenisation once, false-negative masks and batches.
May import runtime and eval (the filter index, neighbourhoods); never models, distill, lit or chain.

`kgc_kd.data.datamodule.KGDataModule` is the one Lightning-facing class here; it is not imported by
this package so that the rest of the data layer stays usable without Lightning.
"""

from kgc_kd.data.io import DataFormatError
from kgc_kd.data.kg import KG
from kgc_kd.data.sources import load_kg
from kgc_kd.data.synthetic import synthetic_kg

__all__ = ["KG", "DataFormatError", "load_kg", "synthetic_kg"]
