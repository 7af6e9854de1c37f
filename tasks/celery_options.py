"""Celery settings derived from a stagesync configuration.

At-least-once on Redis: late acks, requeue when a worker process dies, one message reserved
per process, and a visibility timeout after which Redis hands an unacknowledged message to
another worker (that is how work held by a SIGKILLed worker comes back). Results are not
stored: progress and outcomes live in staging and in the watcher's done reports.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab
from kombu import Queue
from stagesync.protocol.names import EXPIRE_ENVIRONMENTS, PURGE_DELETED, RESYNC, VERIFY
from stagesync.protocol.routing import all_queues, home_queue
from stagesync.settings.durations import parse_duration
from stagesync.settings.model import Settings, WorkerSettings


def soft_time_limit(worker: WorkerSettings) -> float:
    """Seconds after which a task is told to stop (SoftTimeLimitExceeded): 15 s before the
    hard limit, so it can record where it is; at least 1 s."""
    return max(worker.task_time_limit_seconds - 15, 1)


def celery_options(settings: Settings) -> dict[str, Any]:
    worker = settings.worker
    queues = all_queues(settings)
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": worker.visibility_timeout_seconds,
            # Kombu looks for expired unacknowledged messages every interval x throttle seconds
            # (10 x 10 by default): a SIGKILLed worker's message came back up to 100 s after
            # its visibility timeout. A tenth of the timeout, one cheap sorted-set scan each.
            "unacked_restore_interval": max(1, worker.visibility_timeout_seconds // 10),
            "unacked_restore_throttle": 1,
            # One worker restores at a time, under a Redis lock that expires after 300 s by
            # default: a worker SIGKILLed while holding it stopped every restore for five
            # minutes. A restore of a few messages takes milliseconds, and each message's
            # restore is its own transaction, so a lock that lapses early cannot duplicate one.
            "unacked_mutex_expire": max(1, worker.visibility_timeout_seconds // 10),
            "socket_timeout": 30,
            "socket_connect_timeout": 10,
            "retry_on_timeout": True,
        },
        "task_queues": [Queue(name, routing_key=name) for name in queues],
        "task_default_queue": queues[0],
        "task_create_missing_queues": False,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task killed by the hard time limit goes back to its queue: its redeliveries are
        # counted, and past `max_deliveries` it is split or dead-lettered instead of looping.
        "task_acks_on_failure": True,
        "task_acks_on_timeout": False,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": worker.task_time_limit_seconds,
        "task_soft_time_limit": soft_time_limit(worker),
        # Events cost several Redis commands per task; Flower enables them on the workers it
        # watches (its --enable_events, on by default), so they run only when someone looks.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "worker_max_memory_per_child": 400_000,  # KiB: a leaking child is replaced
        "enable_utc": True,
        "beat_schedule": beat_schedule(settings),
    }


def _crontab(fields: str) -> crontab:
    """Standard crontab order (minute hour day month weekday) into Celery's keywords."""
    minute, hour, day, month, weekday = fields.split()
    return crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month,
                   day_of_week=weekday)


# Erasure runs hourly for every collection that asks for it.
PURGE_EVERY_SECONDS = 3600
# Expired environments go within about a minute of their expiry.
EXPIRY_EVERY_SECONDS = 30


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """`celery -A stagesync.tasks beat` jobs: the configured `schedule` plus erasure purges."""
    jobs: dict[str, dict[str, Any]] = {}
    for entry in settings.schedule:
        collection = settings.collection(entry.collection)
        timing: Any = (parse_duration(entry.every).total_seconds() if entry.every
                       else _crontab(str(entry.cron)))
        jobs[f"{entry.task}-{entry.collection}"] = {
            "task": RESYNC if entry.task == "resync" else VERIFY,
            "schedule": timing, "args": [entry.collection],
            "options": {"queue": home_queue(collection)},
        }
    jobs["expire-environments"] = {
        "task": EXPIRE_ENVIRONMENTS, "schedule": EXPIRY_EVERY_SECONDS, "args": [],
        "options": {"queue": home_queue(settings.collections[0])},
    }
    for collection in settings.collections:
        if collection.purge_deleted_after:
            jobs[f"purge-{collection.name}"] = {
                "task": PURGE_DELETED, "schedule": PURGE_EVERY_SECONDS,
                "args": [collection.name], "options": {"queue": home_queue(collection)},
            }
    return jobs
