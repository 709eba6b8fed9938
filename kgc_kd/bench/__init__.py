"""`python -m kgc_kd.bench`: how fast and how big, measured the same way every time (see __main__.py).

One file per section: `peak.py` (this machine's matmul peak), `train_step.py` (training throughput and
FLOP utilisation), `evaluation.py` (encoding, ranking, evaluation memory), `stages.py` (a chain's
students: size and inference latency), `chain_run.py` (the default chain's time by stage and phase,
its peak memory). `measure.py` holds the timing and memory primitives they share.
"""
