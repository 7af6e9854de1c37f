"""Per-process resources of a worker: clients, apply contexts, rate limiter, done reports.

Built lazily on first use and rebuilt after a fork (Celery's prefork children must not share
their parent's MongoDB or Redis sockets).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from datetime import datetime

import redis
from pymongo import MongoClient
from stagesync.deployments.broker import ChangeSignal
from stagesync.deployments.guard import assert_distinct_deployments, assert_distinct_uris
from stagesync.deployments.in_lists import configure as configure_in_lists
from stagesync.deployments.production import ProductionReader
from stagesync.deployments.staging import connect_staging
from stagesync.protocol.names import (
    ENVIRONMENTS_CHANGED_KEY,
    deliveries_key,
    done_key,
    done_report,
    scoped_name,
    split_scope,
    stats_key,
)
from stagesync.protocol.parts import WHOLE, BatchPart
from stagesync.protocol.routing import queue_for
from stagesync.rules.document import Document
from stagesync.rules.pii import Masker
from stagesync.rules.references import Reference, references_of
from stagesync.settings import Settings, load_settings
from stagesync.settings.collection import CollectionSettings
from stagesync.state.database import state_database
from stagesync.state.dead_letters import DeadLetterStore
from stagesync.state.environment_backlog import EnvironmentBacklog
from stagesync.state.environments import (
    DELETING,
    FILLING,
    FOLLOWED,
    FROZEN,
    RESYNC,
    Environment,
    EnvironmentCache,
    EnvironmentStore,
    NoSuchEnvironment,
    environment_settings,
)
from stagesync.state.guard_markers import GuardMarkers
from stagesync.state.index_mirror_records import IndexMirrorRecords
from stagesync.state.pii_state import record_masking
from stagesync.state.unclassified_paths import forget_classified, held_count
from stagesync.tasks.apply.context import ApplyContext, ApplyResult
from stagesync.tasks.apply.index_guard import MirroredIndexGuard
from stagesync.tasks.apply.rate_limit import QueueRateLimiter
from stagesync.tasks.apply.references import Follower, ReferenceResolver, SubsetLinks, Target
from stagesync.tasks.apply.staging_io import TargetCollection
from stagesync.tasks.apply.targets import (
    BrokenTarget,
    EnvironmentTarget,
    FrozenTarget,
)
from stagesync.tasks.celery_app import app
from stagesync.tasks.enqueue import publish_apply
from stagesync.tasks.metrics import UNCLASSIFIED_PATHS

# A delivery counter outlives any redelivery cycle of its message, then goes.
DELIVERY_COUNTER_TTL = 24 * 3600


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.production = ProductionReader(settings.prod)
        self.staging = connect_staging(settings.staging)
        self.state_db = state_database(self.staging, settings.staging)
        self.dead_letters = DeadLetterStore(self.state_db)
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=30)
        self.rate_limiter = QueueRateLimiter(settings, self.redis, self.state_db)
        self._contexts: dict[str, ApplyContext] = {}
        signal = ChangeSignal(self.redis, ENVIRONMENTS_CHANGED_KEY)
        self.environment_store = EnvironmentStore(self.state_db, signal)
        self.environment_backlog = EnvironmentBacklog(self.state_db)
        self.environments = EnvironmentCache(
            lambda: self.environment_store.all(FOLLOWED), signal.token)
        self._environment_client: MongoClient[Document] | None = None
        # (collection, environment, its creation time) -> context: a name deleted and
        # created again gets a context of its own.
        self._environment_contexts: dict[tuple[str, str, datetime], ApplyContext] = {}

    def targets(self, name: str) -> list[ApplyContext | EnvironmentTarget]:
        """The main staging's context of the collection, then `environment_targets`."""
        return [self.context(name), *self.environment_targets(name)]

    def environment_targets(self, name: str) -> list[EnvironmentTarget]:
        """One target per environment the stream follows (as this process last read them:
        as of its last check): written, or remembered when frozen. An environment whose
        context cannot be built is a BrokenTarget: contained, never failing the main
        staging's batch."""
        found: list[EnvironmentTarget] = []
        for environment in self.environments.current():
            if environment.state == FROZEN:
                found.append(FrozenTarget(
                    name, environment.name, environment.overflowed, self.environment_backlog,
                    self.environment_store, self.settings.environments.freeze_backlog,
                    self.state_db, self.dead_letters))
                continue
            try:
                found.append(self.environment_context(name, environment))
            except Exception as error:
                found.append(BrokenTarget(name, environment.name, self.state_db,
                                          self.dead_letters, error))
        return found

    def environment_context(self, name: str, environment: Environment) -> ApplyContext:
        filling = environment.state in FILLING or environment.thaw_mode == RESYNC
        key = (name, environment.name, environment.created_at, filling)
        context = self._environment_contexts.get(key)
        if context is None:
            main = self.context(name)
            settings = environment_settings(main.settings, environment)
            client = self.environment_client()
            target = TargetCollection(client, settings, main.rules)
            scope = scoped_name(name, environment.name)
            guard = MirroredIndexGuard(scope, target.collection,
                                       IndexMirrorRecords(self.state_db, scope)) \
                if settings.indexes == "mirror" else None
            context = ApplyContext(
                settings, main.rules, main.masker, main.production, target, self.state_db,
                self.dead_letters, self._references(settings, client, environment),
                self.settings.secret_bytes(), index_guard=guard, environment=environment.name,
                filling=filling,
            )
            self._environment_contexts = {
                k: v for k, v in self._environment_contexts.items()
                if (k[0], k[1]) != (name, environment.name)}
            self._environment_contexts[key] = context
        return context

    def environment_client(self) -> MongoClient[Document]:
        """Where environments live: the staging deployment, or `environments.uri`."""
        uri = self.settings.environments.uri
        if uri is None:
            return self.staging
        if self._environment_client is None:
            # Never production: the same-deployment guard, as for staging (a refusal fails
            # the environments' applies, which are contained, never the main staging's).
            staging = self.settings.staging.model_copy(update={"uri": uri})
            settings = self.settings.model_copy(update={"staging": staging})
            assert_distinct_uris(settings)
            client = connect_staging(staging)
            try:
                assert_distinct_deployments(self.production, client, settings, GuardMarkers(
                    state_database(client, staging)))
            except Exception:
                client.close()
                raise
            self._environment_client = client
        return self._environment_client

    def context(self, name: str) -> ApplyContext:
        """The apply context of a collection, or of its copies in an environment when the
        name is scoped (`orders@pr-1`, as resync chunks and dead letters of an environment
        name it): those are read from the store, not the cache (a new environment's copy)."""
        collection_name, environment_name = split_scope(name)
        if environment_name is not None:
            environment = self.environment_store.require(environment_name)
            if environment.state == DELETING:
                # Its copy, replays and such stop writing at their next batch.
                raise NoSuchEnvironment(f"environment {environment_name!r} is being deleted")
            return self.environment_context(collection_name, environment)
        context = self._contexts.get(name)
        if context is None:
            collection = self.settings.collection(name)
            masker = Masker.from_settings(collection, self.settings.secret_bytes())
            record_masking(self.state_db, name, masker.fingerprint)
            forget_classified(self.state_db, collection)  # paths allowed since they were seen
            UNCLASSIFIED_PATHS.labels(name).set(held_count(self.state_db, name))
            context = ApplyContext.build(
                collection, masker, self.production.collection(collection), self.staging,
                self.state_db, self._references(collection, self.staging),
                self.settings.secret_bytes(),
            )
            self._contexts[name] = context
        return context

    def _references(self, collection: CollectionSettings, client: MongoClient[Document],
                    environment: Environment | None = None) -> ReferenceResolver | None:
        referenced_by = [other.name for other in self.settings.collections
                         if collection.name in other.references.values()]
        if not collection.references and not referenced_by:
            return None
        targets = {}
        subsets = set()
        for name in set(collection.references.values()):
            target = self.settings.collection(name)
            if environment is not None:
                target = environment_settings(target, environment)
            targets[name] = Target(client[target.target_db][target.target_collection],
                                   target.soft_delete_field)
            if target.subset is not None and (
                    target.subset.follow or (target.subset.percent or 100) < 100):
                subsets.add(name)
        follow = collection.subset.follow if collection.subset else None
        followers = [
            Follower(other.name, Reference(other.subset.follow, collection.name),
                     self.production.collection(other))
            for other in self.settings.collections
            if other.subset and other.subset.follow
            and other.references[other.subset.follow] == collection.name
        ]
        return ReferenceResolver(
            collection.name, references_of(collection.references), targets, self.state_db,
            referenced_by, self._apply_again,
            SubsetLinks(Reference(follow, collection.references[follow]) if follow else None,
                        followers,
                        follows_subset=bool(follow) and collection.references[follow] in subsets),
            environment.name if environment is not None else None,
        )

    def _apply_again(self, collection: str, pids: list[str]) -> None:
        """Enqueue applies of documents whose references can now be translated."""
        settings = self.settings.collection(collection)
        by_queue: dict[str, list[tuple[str, str]]] = {}
        for pid in pids:
            by_queue.setdefault(queue_for(settings, pid), []).append((pid, "reference"))
        for queue, changes in by_queue.items():
            publish_apply(app, queue, collection, None, WHOLE, changes)

    def count_delivery(self, task_id: str, attempt: int) -> int:
        """How many times this message (this retry of this task) has been started."""
        key = f"{deliveries_key(task_id)}:{attempt}"
        with self.redis.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, DELIVERY_COUNTER_TTL)
            count, _ = pipe.execute()
        return int(count)

    def report_done(
        self, collection: str, batch: str | None, part: BatchPart, result: ApplyResult | None,
        outcomes: Mapping[str, int] | None = None, source: str = "stream",
    ) -> None:
        """Tell the watcher a part of a batch is done, and count what happened (one trip).

        Stream outcomes are counted under their own names; resync and replay outcomes under
        `resync:<outcome>` and `replay:<outcome>`, so `status` can tell changes from copies.
        """
        counts = dict(result.outcomes if result else outcomes or {})
        prefix = "" if source == "stream" else f"{source}:"
        key = stats_key(collection)
        with self.redis.pipeline(transaction=False) as pipe:
            if batch:
                pipe.rpush(done_key(collection), done_report(batch, part))
            for outcome, count in counts.items():
                if count:
                    pipe.hincrby(key, prefix + outcome, count)
            if result is not None and source == "stream":
                pipe.hincrby(key, "applied_batches", 1)
                pipe.hset(key, "last_applied_at", time.time())
            pipe.execute()

    def close(self) -> None:
        self.production.close()
        self.staging.close()
        if self._environment_client is not None:
            self._environment_client.close()
        self.redis.close()


_lock = threading.Lock()
_runtime: Runtime | None = None
_runtime_pid: int | None = None


def get_runtime() -> Runtime:
    global _runtime, _runtime_pid
    with _lock:
        if _runtime is None or _runtime_pid != os.getpid():
            settings = load_settings()
            configure_in_lists(settings.in_list_max)
            _runtime = Runtime(settings)
            _runtime_pid = os.getpid()
        return _runtime


def reset_runtime() -> None:
    """Forget the resources of this process (after a fork, or in tests)."""
    global _runtime, _runtime_pid
    with _lock:
        if _runtime is not None and _runtime_pid == os.getpid():
            _runtime.close()
        _runtime = None
        _runtime_pid = None

