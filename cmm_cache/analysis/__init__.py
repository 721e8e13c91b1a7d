"""Analysis of runs against each other and against published numbers."""
