"""`make bench` (`python -m bench`): how fast Caseflow is, and how much its architecture costs compared with the
parts it is built from, measured against baselines in the same run so ratios survive a noisy machine.

Key design decision: the HTTP load comes from k6 (a Go load tester, not the bottleneck), the non-HTTP
baselines (NATS echo, MongoDB `find_one`/`insert_one`) from a small asyncio generator in its own process; every
number is taken against real processes on free ports (`deploy.processes`), never against mocks.
"""
