"""A whole federation with Google Drive as the global server: the real pydrive2 / google-api-python-client code over
HTTP, against the Drive API test double on 127.0.0.1 (tests/drive_server.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from drive_server import DriveServer
from federation_support import assert_files_are_public_only, small_simulation

from coordinator.loop import Coordinator
from coordinator.run import create_run
from coordinator.simulation import default_model, simulation_config
from coordinator.transport import CeleryTransport
from medheaven.crypto.codec import load_public_keys, load_secret_keys
from medheaven.crypto.masks import load_agreement_key
from medheaven.crypto.signing import load_signing_key
from medheaven.federated.aggregator import AggregatorNode
from medheaven.federated.hospital import HospitalNode
from medheaven.federated.nodes import schema_reader
from medheaven.federated.setup import publish_public_context, register_hospital
from medheaven.federated.verify import verify_round
from medheaven.settings import Settings
from medheaven.store.audit import check_run
from medheaven.store.base import Store
from medheaven.store.drive import open_drive_store
from workers.app import create_app
from workers.cluster import ThreadCluster


def test_drive_store_carries_a_whole_federation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # httplib2 honours proxy variables
    simulation = small_simulation(tmp_path / "sim", rows=2000)
    with DriveServer() as server:
        folder = server.create_folder("medheaven-federation")
        settings = Settings(
            store=f"drive://{folder}",
            drive_service_account=server.service_account_file(tmp_path / "service-account.json"),
            drive_api_root=f"{server.url}/",
        )

        def drive() -> Store:
            # one client per party: like separate machines, and httplib2 connections are not shared across threads
            return open_drive_store(folder, settings=settings, backoff_base=0.01)

        operator = drive()
        publish_public_context(operator, load_public_keys(simulation.keys.public))
        for hospital, files in simulation.identities.items():
            register_hospital(operator, hospital, files.verify_key.read_text(), files.agreement_public.read_text())
        config = simulation_config(simulation, run="drive", rounds=2, round_timeout=300)
        create_run(operator, config, model=default_model(simulation), layout=simulation.layout)
        secret = load_secret_keys(simulation.keys.secret)
        nodes = {
            h: HospitalNode(
                hospital_id=h,
                store=drive(),
                data_path=simulation.data_files[h],
                reader=schema_reader("prepared", None),
                secret=secret,
                signing_key=load_signing_key(simulation.identities[h].signing_key, hospital_id=h),
                agreement_key=load_agreement_key(simulation.identities[h].agreement_key),
            )
            for h in simulation.hospitals
        }
        aggregator = AggregatorNode(drive(), expected_fingerprint=simulation.keys.fingerprint)
        app = create_app(Settings(broker_url="memory://"), hospitals=list(simulation.hospitals))
        with ThreadCluster(
            app, hospitals=list(simulation.hospitals), node_factory=nodes.__getitem__, aggregator=aggregator
        ):
            history = Coordinator(drive(), CeleryTransport(app), config, poll_interval=0.1).run()

        assert [r["round"] for r in history] == [1, 2]
        checks = check_run(operator, "drive")
        assert checks and all(c.ok for c in checks), [c.detail for c in checks if not c.ok]
        for round_number in (1, 2):
            report = verify_round(operator, secret, "drive", round_number)
            assert report["max_abs_error"] <= 1e-6
        uploaded = [(f.title, f.content) for f in server.files.values() if not f.is_folder and not f.trashed]
        weights = nodes[simulation.hospitals[0]].global_weights("drive", 2)
        assert assert_files_are_public_only(uploaded, simulation.keys.secret, weights) >= 15
        titles = {title for title, _ in uploaded}
        assert {"context.public", "hospitals.json", "model.json", "global.ckks", "manifest.json"} <= titles
        assert not any("secret" in title or title.endswith(".pem") for title in titles)
