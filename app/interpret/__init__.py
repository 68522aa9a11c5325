"""Automatic explanations of SAE features, delphi-style: model clients, explainers, scorers; no web routes here."""
