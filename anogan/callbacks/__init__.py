"""Layer 6, callbacks: what reads the modules' step outputs and writes the run directory (sample grids
during training; metrics, figures, score files, stitched maps and dashboards in evaluation).
Imports nets, metrics, runtime, data and models; never the engine."""

from anogan.callbacks.dashboard import WandbEvaluation
from anogan.callbacks.figures import PaperFigures
from anogan.callbacks.maps import ScanMaps
from anogan.callbacks.metrics import AnomalyMetrics
from anogan.callbacks.samples import SampleGrid, SampleQuality
from anogan.callbacks.score_file import ScoreFile, read_scores

__all__ = ["AnomalyMetrics", "PaperFigures", "SampleGrid", "SampleQuality", "ScanMaps", "ScoreFile", "WandbEvaluation",
           "read_scores"]
