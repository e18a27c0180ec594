"""Offline-first multilingual retrieval chat assistant with cited answers."""

__version__ = "0.1.0"
