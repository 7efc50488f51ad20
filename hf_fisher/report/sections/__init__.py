"""Card subsections and plots of the companion measurements, one module per results section.

Each module renders one top-level section of ``results.json`` (as written by the measurement's
``to_json()``) and reads nothing else: ``plot_<section>(section, path) -> path`` draws a PNG
headless and ``card_<section>(section) -> str`` returns the subsection's Markdown without its
heading. :data:`hf_fisher.report.plots.REPORT_REGISTRY` names them by dotted string, so a report
imports only the modules of the sections present. Measurement modules never import these: the
dependency points from the report to the measurements, not back.
"""
