"""Forgetting analysis: windows of events -> I(u, t), F, f_k, p(k|u,t), interest states."""
