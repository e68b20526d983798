"""Using a trained federation's model outside the federation: ``export`` (decrypt a committed global model into a
Keras file plus its preprocessing, key holders only) and ``predict`` (score a CSV with it)."""
