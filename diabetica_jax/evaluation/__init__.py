"""Evaluation on the Diabetica benchmarks (MCQ, fill-in-the-blank, judged dialogue): tasks, metrics, judges, reports."""
