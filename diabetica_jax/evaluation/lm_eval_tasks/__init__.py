"""lm-eval task YAMLs of the Diabetica benchmarks and the datasets they read (diabetica_tasks.py)."""
