"""Run reports: a standalone HTML page (leaderboard, charts, searchable verdicts) plus CSV / JSON."""

from __future__ import annotations

from pollux.report.build import ReportFiles, build_report

__all__ = ["ReportFiles", "build_report"]
