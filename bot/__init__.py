"""Prompt rollback bot: a registry of prompt versions that rolls bad ones back."""

__version__ = "0.1.0"
