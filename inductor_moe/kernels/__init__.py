"""Kernel families behind the op contracts: ``reference`` (PyTorch, any device), ``triton``, ``flydsl``."""
