"""MongoDB servers of a test's own, for what the session's shared pair must not be put through.

Two cases need them: a production server whose change history runs out on demand
(`--oplog-max-entries`, so a stored resume token falls off it: 286 ChangeStreamHistoryLost),
and a staging server killed and restarted on its storage directory. Both are SecantusDB
servers, separate processes on free ports, stopped by PID at teardown; the other side of the
pipeline stays the session's server. With `mongod` or external deployments the fixture skips:
a mongod oplog cannot be made smaller than 990 MB, and external servers are not ours to kill.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagesync.cli.local_servers import LocalServer, start_mongo_test_server

from tests.support.backends import MongoPair
from tests.support.pipeline import Pipeline


@dataclass
class OwnServers:
    """Starts servers and pipelines for one test and stops all of them afterwards."""

    base: MongoPair
    redis_url: str
    workdir: Path
    servers: list[LocalServer] = field(default_factory=list)
    pipelines: list[Pipeline] = field(default_factory=list)

    def server(self, role: str, oplog_max_entries: int | None = None) -> LocalServer:
        """A server with a storage directory (so it can be restarted with its data)."""
        home = self.workdir / f"{role}-{len(self.servers)}"
        server = start_mongo_test_server(data_dir=home / "data", workdir=home,
                                         oplog_max_entries=oplog_max_entries)
        self.servers.append(server)
        return server

    def pipeline(self, collections: list[dict[str, Any]], *, prod: LocalServer | None = None,
                 staging: LocalServer | None = None, **extra: Any) -> Pipeline:
        """A pipeline whose production and/or staging is one of ours, the rest the session's.

        Our staging is reached with `journal=true`. SecantusDB difference: it journals a write
        only for `j: true`, not for `w: "majority"` (the product's staging write concern), so
        writes acknowledged in the last second or so are lost when it is SIGKILLed (measured:
        16 of 300 acknowledged increments). On MongoDB `w: "majority"` is journaled already
        (`writeConcernMajorityJournalDefault`), so this changes nothing there.
        """
        pair = MongoPair(self.base.kind, prod.uri if prod else self.base.prod_uri,
                         f"{staging.uri}&journal=true" if staging else self.base.staging_uri)
        workdir = self.workdir / f"pipeline-{len(self.pipelines)}"
        workdir.mkdir(parents=True)
        pipeline = Pipeline(pair, self.redis_url, workdir, collections, extra)
        self.pipelines.append(pipeline)
        return pipeline

    def stop(self) -> None:
        for pipeline in self.pipelines:
            pipeline.stop()
        for server in self.servers:
            server.stop()
