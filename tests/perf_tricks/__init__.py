"""Learner modules that try to game a perf check, planted by tests/test_perf_guard.py.

Each module is what a leaderboard cheat looks like: a `softmax(x)` that returns a correct
result (or one that looks correct to a single spot check) while fooling a naive timer.
"""
