"""Which failures are the infrastructure's (retry later) and which are the data's (isolate).

Server error codes from MongoDB's error_codes list: a primary stepping down, a node shutting
down, network trouble, an interrupted operation. Anything else is treated as a property of the
change being applied: its batch is split until the bad change stands alone and goes to the
dead-letter store.
"""

from __future__ import annotations

import redis
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError, WriteConcernError


class TransientError(RuntimeError):
    """A failure of stagesync's own that a later attempt overcomes (lost write races, a version
    counter that did not answer): the task retries, the change is not the problem."""


TRANSIENT_CODES = frozenset({
    6,      # HostUnreachable
    7,      # HostNotFound
    89,     # NetworkTimeout
    91,     # ShutdownInProgress
    189,    # PrimarySteppedDown
    262,    # ExceededTimeLimit
    9001,   # SocketException
    10107,  # NotWritablePrimary
    11600,  # InterruptedAtShutdown
    11602,  # InterruptedDueToReplStateChange
    13435,  # NotPrimaryNoSecondaryOk
    13436,  # NotPrimaryOrSecondary
    64,     # WriteConcernFailed (wtimeout)
    50,     # MaxTimeMSExpired
    112,    # WriteConflict
    134,    # ReadConcernMajorityNotAvailableYet
    # A cursor the server dropped (idle past its timeout, or its plan killed by a collection
    # change): the read is simply started again from the last checkpoint.
    43,     # CursorNotFound
    175,    # QueryPlanKilled
})


def is_transient(error: BaseException) -> bool:
    if isinstance(error, ConnectionFailure | TransientError | TimeoutError):
        return True  # ConnectionFailure covers AutoReconnect, NotPrimaryError, NetworkTimeout
    if isinstance(error, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError):
        return True
    if isinstance(error, WriteConcernError):
        # Written on the primary but not acknowledged as asked (wtimeout, a step-down, an
        # unsatisfiable concern): it may roll back, so the batch is retried, never done.
        return True
    if isinstance(error, OperationFailure):
        if error.code in TRANSIENT_CODES:
            return True
        labels = ("RetryableWriteError", "TransientTransactionError", "ResumableChangeStreamError")
        return any(error.has_error_label(label) for label in labels)
    if isinstance(error, PyMongoError):
        return error.has_error_label("RetryableWriteError")
    return False


def describe_error(error: BaseException) -> str:
    """Type and message, trimmed; MongoDB messages about staging writes hold masked values only."""
    code = getattr(error, "code", None)
    prefix = f"{type(error).__name__}" + (f" (code {code})" if code is not None else "")
    return f"{prefix}: {str(error)[:400]}"
