"""Reports and comparisons of finished runs: tables, curves, figures, HTML."""
