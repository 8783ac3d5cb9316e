"""Scheduling: filters → weighted scorers → picker, grouped in profiles (upstream vocabulary).

Pure computation over one snapshot of endpoint states; no I/O, no awaits, no protocol imports.
"""
