"""Federated averaging as plain functions: plaintext reference, hospital side, aggregator side."""
