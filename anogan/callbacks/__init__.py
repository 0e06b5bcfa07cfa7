"""Lightning callbacks: sample grids during training; metrics, figures and score files in evaluation."""

from anogan.callbacks.dashboard import WandbEvaluation
from anogan.callbacks.figures import PaperFigures
from anogan.callbacks.maps import ScanMaps
from anogan.callbacks.metrics import AnomalyMetrics, auroc, operating_point
from anogan.callbacks.samples import SampleGrid
from anogan.callbacks.score_file import ScoreFile, read_scores

__all__ = ["AnomalyMetrics", "PaperFigures", "SampleGrid", "ScanMaps", "ScoreFile", "auroc", "operating_point",
           "read_scores", "WandbEvaluation"]
