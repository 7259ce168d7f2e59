"""Stage 1, data: finding cases in a dataset's layout, checking them, preprocessing and caching."""
