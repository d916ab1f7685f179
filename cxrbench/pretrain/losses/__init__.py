"""Losses of the pretraining methods, one module per loss (``nt_xent``, ...), each with its test."""
