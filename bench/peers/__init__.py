"""Hand-written peers of ``eventmail run``, measured by :mod:`bench.pipeline` in the same run."""
