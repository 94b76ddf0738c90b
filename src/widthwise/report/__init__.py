"""Reports of width-consistency studies: figures, a self-contained HTML page, tidy CSV.

    from widthwise.report import build_report, build_compare
    build_report("runs/quickstart")                 # runs/quickstart/report/report.html
    build_compare(["runs/mup", "runs/sp"], "cmp")   # cmp/report.html

Figure functions (pure: arrays in, ``matplotlib.figure.Figure`` out) live in
``fig_curves``, ``fig_fits`` and ``fig_repr``; ``sections_*`` decide what a study
has data for; ``build`` and ``compare`` write the files. See docs/report.md.
"""

from widthwise.report.build import build_report
from widthwise.report.compare import build_compare

__all__ = ["build_compare", "build_report"]
