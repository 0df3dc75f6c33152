"""embedkit's benchmarks: embedkit against its peers, side by side, in one run.

Run `python -m benchmarks` (see `docs/benchmarks.md`).
"""
