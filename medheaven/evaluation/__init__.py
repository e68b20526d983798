"""How models are scored: ``metrics`` (what a hospital reports on its own rows, and what ``predict`` prints) and
``baseline`` (the centralised and local-only baselines a federation is compared with)."""
