"""The 2016 FMN load test, end to end: 15,000 bus messages through the whole local stack.

``fmn loadtest`` (or ``python -m loadtest``); README.md says how to read its report.
"""
