"""Layer 2, metrics: detection and localisation metrics as pure functions of scores, maps and
masks (AUROC, the paper's operating point, AUPRC, F1-max, AUPRO, calibrated thresholds). Imports nets'
equations at most; nothing of Lightning's loops."""
