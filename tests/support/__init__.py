"""Test support (not shipped): the table of bad inputs and the generated out-of-domain values,
tiny lm-eval tasks and evaluation data, and the per-item comparison with lm-eval."""
