"""Masks as values, global top-k selection, the N:M layout and the sparsity patterns (``--pattern``).

PATTERNS is the name table of the patterns (gemdeploy.sparsity.patterns): each carries its mask projection, the
constraint compaction keeps, the check of an export and TensorRT's sparse-weights flag, so adding a pattern is
one new object plus one line here.
"""

from gemdeploy.registry import Registry

_P = "gemdeploy.sparsity.patterns"
PATTERNS: Registry = Registry("pattern", {
    "unstructured": (f"{_P}:UNSTRUCTURED", "any weight may go (the default)"),
    "2:4": (f"{_P}:NM", "N:M from --nm along input channels, TensorRT's sparse-weights layout"),
    "channel": (f"{_P}:CHANNEL", "whole channels go (coupled channel groups); --sparsity is the channel fraction"),
})
