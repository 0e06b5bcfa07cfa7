"""Layer 3, runtime: what every run needs around the maths: checkpoints (one reader, weights_only),
checks of settings and numbers, preemption, seeding, distributed processes and launchers, atomic I/O.
Imports nets and metrics; never data, models, callbacks or the engine."""
