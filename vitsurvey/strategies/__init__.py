"""Efficiency strategies, one module per family. Each takes a model and returns a model (or changes it
in place and says so), so strategies compose."""
