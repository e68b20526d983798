"""MedHeaven: federated readmission modelling with CKKS-encrypted FedAvg.

The library holds no Celery imports: workers/ and coordinator/ are thin adapters over it.
"""

__version__ = "0.1.0"
