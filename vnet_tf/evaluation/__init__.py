"""Stage 5, evaluation: metrics, the report of a set of cases, figures, comparisons."""
