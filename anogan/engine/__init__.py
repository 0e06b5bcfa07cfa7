"""Layer 7, engine: what ``train.py`` and ``evaluate.py`` run (pipeline, stages), sweeps and their
summaries, the command line's help, summaries and error reporting. The top layer: it may import every
other one, and no library module imports it."""
