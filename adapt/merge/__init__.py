"""Folding adapters back into weights (reparam, kernels); merging models (soups, arithmetic)."""
