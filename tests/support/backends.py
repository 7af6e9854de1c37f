"""Which MongoDB the integration tests run against, chosen once per session.

1. `STAGESYNC_TEST_PROD_URI` and `STAGESYNC_TEST_STAGING_URI`: two existing deployments.
2. `mongod` on PATH: two single-node replica sets started here in temporary directories.
3. Otherwise two SecantusDB servers (`stagesync[test]` installs them), separate processes on
   free ports, each with its own storage directory so a test can restart one intact.

Every integration test runs unchanged on all three. The few workarounds for SecantusDB's
differences from MongoDB (shared/MONGO-TEST-SERVER.md) live in the fixtures, behind
`MongoPair.kind`, each naming the difference.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pymongo import MongoClient
from stagesync.cli.local_servers import LocalServer, free_port, start_mongo_test_server


@dataclass
class MongoPair:
    kind: str  # "secantus", "mongod" or "external"
    prod_uri: str
    staging_uri: str
    servers: list[LocalServer] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def is_test_server(self) -> bool:
        return self.kind == "secantus"

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        for process in self.processes:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def start_pair(workdir: Path) -> MongoPair:
    prod = os.environ.get("STAGESYNC_TEST_PROD_URI")
    staging = os.environ.get("STAGESYNC_TEST_STAGING_URI")
    if prod and staging:
        return MongoPair("external", prod, staging)
    if shutil.which("mongod"):
        return _start_replica_sets(workdir)
    # Two processes, like two deployments. `directConnection=true`: every SecantusDB server
    # reports the same fixed `setName`, so a replica-set URI would not tell them apart.
    prod_server = start_mongo_test_server(
        data_dir=workdir / "prod" / "data", workdir=workdir / "prod"
    )
    staging_server = start_mongo_test_server(
        data_dir=workdir / "staging" / "data", workdir=workdir / "staging"
    )
    return MongoPair(
        "secantus", prod_server.uri, staging_server.uri, [prod_server, staging_server]
    )


def _start_replica_sets(workdir: Path) -> MongoPair:
    pair = MongoPair("mongod", "", "")
    uris = []
    for name in ("prod", "staging"):
        port = free_port()
        dbpath = workdir / f"mongod-{name}"
        dbpath.mkdir(parents=True, exist_ok=True)
        replica_set = f"rs{name}"
        log = open(dbpath / "mongod.log", "ab")  # noqa: SIM115 - owned by the process
        pair.processes.append(subprocess.Popen(
            ["mongod", "--replSet", replica_set, "--port", str(port), "--dbpath", str(dbpath),
             "--bind_ip", "127.0.0.1", "--oplogSize", "64"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))
        direct: MongoClient = MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                                          serverSelectionTimeoutMS=30_000)
        _wait(lambda c=direct: c.admin.command("ping"))
        direct.admin.command("replSetInitiate", {
            "_id": replica_set, "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}],
        })
        _wait(lambda c=direct: c.admin.command("hello").get("isWritablePrimary") or None)
        direct.close()
        uris.append(f"mongodb://127.0.0.1:{port}/?replicaSet={replica_set}")
    pair.prod_uri, pair.staging_uri = uris
    return pair


def _wait(check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception as error:  # retried until the deadline
            last = error
        time.sleep(0.2)
    raise RuntimeError(f"mongod did not become ready: {last}")
