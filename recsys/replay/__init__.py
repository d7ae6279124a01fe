"""Offline A/B replay of rankers on logged traffic, and off-policy estimators."""
