"""Fold arithmetic in float64, rounded once into each tensor's dtype. Knows no files."""
