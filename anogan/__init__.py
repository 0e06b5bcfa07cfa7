"""anogan: AnoGAN (Schlegl et al., IPMI 2017) as a Lightning + Hydra experiment framework."""

__version__ = "0.1.0"
