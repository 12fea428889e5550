"""What the paper measures: retraining ground truth, detection methods, metrics, zero-shot evaluation, sensitivity, cleaning, editing, trace-back, the benchmark."""
