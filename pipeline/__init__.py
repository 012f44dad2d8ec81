"""Ray stages: preprocessing with Ray Data, DDP training with Ray Train, evaluation and sweeps.
Modules import Ray inside the functions that need it, so configs load without it."""
