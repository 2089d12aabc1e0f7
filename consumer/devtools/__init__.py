"""Local stand-ins for the outside world, used by ``eventmail demo`` and the benchmarks (an SMTP sink)."""
