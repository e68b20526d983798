"""Data sets for MedHeaven: schemas, cleaning, the shared feature layout, partitioning into simulated hospitals
and a synthetic generator.

The pipeline, in order::

    schema = get_schema("diabetes130")                 # what the file looks like
    frame = load_dataset(path, schema)                 # features + "group" (patient) + "label" (0/1)
    parts, test = split_dataset(frame, hospitals=5, scheme="iid", test_fraction=0.2, seed=0)
    layout = fit_layout(frame, schema)                 # fixed columns shared by every hospital
    write_split(out_dir, parts, test, layout, schema, meta={...})

    # at a hospital
    data = prepare_hospital_data(load_dataset(out_dir / "h1.csv", get_schema("prepared")), layout)
    stats = SufficientStats.of(data.train_x)           # encrypted and summed across hospitals
    standardiser = Standardiser.from_stats(summed_stats)
"""

from medheaven.data.encoding import (
    Standardiser,
    SufficientStats,
    encode_features,
    fit_layout,
)
from medheaven.data.hospital import HospitalData, prepare_hospital_data
from medheaven.data.loading import get_schema, load_dataset, load_frame, read_raw_csv
from medheaven.data.partition import describe_partition, split_dataset, write_split
from medheaven.data.schemas import ALL_SCHEMA_NAMES, GROUP, LABEL, PREPARED, SCHEMA_NAMES, Schema
from medheaven.data.synthetic import generate_synthetic
from medheaven.feature_layout import FeatureLayout

__all__ = [
    "ALL_SCHEMA_NAMES",
    "GROUP",
    "LABEL",
    "PREPARED",
    "SCHEMA_NAMES",
    "FeatureLayout",
    "HospitalData",
    "Schema",
    "Standardiser",
    "SufficientStats",
    "describe_partition",
    "encode_features",
    "fit_layout",
    "generate_synthetic",
    "get_schema",
    "load_dataset",
    "load_frame",
    "prepare_hospital_data",
    "read_raw_csv",
    "split_dataset",
    "write_split",
]
