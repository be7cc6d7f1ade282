"""The benchmark runner (``e2abl-bench``)."""
