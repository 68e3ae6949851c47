"""Run tracking: the local run record (:mod:`.record`) and Weights & Biases (:mod:`.wandb`)."""
