"""mrpo: preference optimization against one or many reference models (DPO, multi-DPO, MRPO)."""

__version__ = "0.1.0"
