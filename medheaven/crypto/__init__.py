"""CKKS key custody, parameter planning, packing and signed envelopes (TenSEAL + Ed25519)."""
