"""Reporting: report.json and report.md (:mod:`.report`, :mod:`.text`), the figures (:mod:`.plots`),
the analyses behind them (:mod:`.analysis`) and runs side by side (:mod:`.compare`)."""
