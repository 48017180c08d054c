"""The report: figures, movies and one offline HTML page with an explorer (DESIGN section 2.7)."""

from .html import ReportConfig, build_report, report_stage, write_report

__all__ = ["ReportConfig", "build_report", "report_stage", "write_report"]
