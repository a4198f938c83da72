"""Ticket-finding methods by name (the `--method` choices), one per file; their name table is
gemdeploy.registry.METHODS (below the run's configuration, which checks --method)."""

from gemdeploy.registry import METHODS

__all__ = ["METHODS"]
