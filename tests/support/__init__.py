"""Test support: the table of bad inputs and the generated out-of-domain values (not shipped)."""
