"""Small, offline building blocks for tests: tiny random models and tokenizers.

These helpers build objects in a few milliseconds and need no network, so tests can use real
transformers objects instead of mocks.
"""
