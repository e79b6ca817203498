"""Ranking: top-K over the catalog, the forgetting strategy and explanations."""
