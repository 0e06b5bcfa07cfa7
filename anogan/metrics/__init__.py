"""Layer 2, metrics: detection and localisation metrics as pure functions of scores, maps and
masks (AUROC, the paper's operating point, AUPRC, F1-max, AUPRO, conformal thresholds and p-values,
scan-level metrics). Imports nets' equations at most; nothing of Lightning's loops."""
