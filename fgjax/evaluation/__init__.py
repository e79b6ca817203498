"""Evaluation: ranking metrics under temporal protocols, detection scoring, quality reports."""
