"""Lightning callbacks that react to a stage's events: phase timing, checkpoints, RNG state, SIGTERM.
May import runtime, config, eval, data, models, distill and lit; imported by chain/ and the entry points."""
