"""Scoring and reporting: metrics (WAF, accuracy, macro-F1), prediction files, plots, report.md."""
