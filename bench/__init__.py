"""Benchmarks: aiobatch side by side with what a user would otherwise write, and with the local services' ceiling.

Run them with ``nox -s bench`` (or ``python -m bench`` in an environment with ``.[bench]`` installed); pass
``--quick`` for a smaller, faster pass. Each case writes ``bench/results/<case>.json``; the run writes
``bench/results/results.md`` and the table in ``docs/benchmarks.md``.

Timings on a shared machine are noisy: each case interleaves its variants round by round, reports medians of
the repeated runs, and judges targets by ratios measured in the same run (the median of per-round ratios).
"""
