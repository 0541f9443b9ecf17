"""Fine-tuning configs: the paper's recipe (base) and one file per task."""
