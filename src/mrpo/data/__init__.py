"""Preference and evaluation data: loading, validation, tokenization, collation."""
