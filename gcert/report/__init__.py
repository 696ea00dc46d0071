"""The static HTML report of a results file (``gcert report``, ``gcert run --report``): summary tables,
mutation strips, witnesses, the margin along t and tolerance histograms, as PNG files beside one index.html."""

from gcert.report.html import MARKER, ReportSummary, check_report_dir, write_report

__all__ = ["MARKER", "ReportSummary", "check_report_dir", "write_report"]
