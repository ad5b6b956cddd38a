"""Views for people: the flow's per-domain summary table and the comparison report of a run (markdown +
self-contained HTML, read back from MLflow, so it can be rendered for any past run)."""
