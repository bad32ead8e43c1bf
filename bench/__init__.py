"""The channels-ha benchmark suite: each workload against channels-ha and channels_redis.

Every layer runs in the same process run, on the same sandbox Redis, so the ratios in one table
compare like with like on a noisy machine. Run ``python bench/run.py --help``; the results
and how to read them are in ``docs/benchmarks.md``.
"""
