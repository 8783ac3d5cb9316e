"""The benchmark results: one folder per run, `<YYYY-MM-DD>-<HHMM>-<tool>[-<tag>]/`, and the
generated index `README.md` (`python -m loadtest.results index`, index.py); `plot.py` draws a
bench report's PNG, again from its JSON with `python -m loadtest.results plot`. `archive/` keeps
the experiments from before runs recorded their commit; nothing links to it as current."""
