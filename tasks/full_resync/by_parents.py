"""The copy of a collection whose subset follows a small parent copy: read only the followers.

A collection with `subset: {follow: PATH}` keeps the documents whose reference at PATH has a
live copy of the parent (`users` for `orders.customerId`). When the parent's copy is a small
sample (an environment's `--sample 5`, a configured `percent`), copying the follower by its
`_id` ranges reads all of production's followers to keep a few, and decides every one of them
against staging: at 20,000 users and 60,000 orders, a `--sample 5` environment spent 97 s
doing that. Instead the copy walks the parent's live copies in this target, in pid order, and
reads production's followers of each list of them by PATH (`$in`, answered by production's
index on PATH): 3,000 orders read instead of 60,000.

When (`copies_by_parents`, decided once, when the resync is set up):
- the target was empty when the resync began: a copy that never visits the documents of
  absent parents cannot remove the ones a non-empty staging holds (its sweep only asks
  whether production still has them);
- production has an index whose first key is PATH; without it every list would be a
  collection scan of its own (on MongoDB too);
- the parent's copies in this target are at most SAMPLE_BY_ID_PERCENT of production's parent
  collection; past that, the follower is nearly whole, and reading it by `_id` range is cheaper
  than looking it up;
- production holds no embedded document at PATH (`references.holds_embedded`): a DBRef is one,
  and `{PATH: {$in}}` would not find it. A DBRef written later is applied by its own change.

Why it is complete: a parent copy that becomes live after its list was read has its followers
applied by its own apply (`ReferenceResolver._followers_again`, which reads production after the
copy is written). An environment's fill copies the follower only once the parent's copy is
done (`environment_ops.fill_order`), and its stream applies do the same. Every follower read
is decided again by the apply (`ReferenceResolver.translate`), so a parent gone meanwhile
leaves its followers out as before.

The chunk's checkpoint (`resume`) is the last parent pid whose followers are applied; a chunk
killed halfway does the current list again (the applies are idempotent). The copy is one chunk
(`walk.WHOLE_COLLECTION`), planned without a walk of the `_id` index: `_id` ranges would only
split each list's read into more queries (and SecantusDB, the test server, plans
`{$and: [{_id: range}, {PATH: {$in}}]}` as a collection scan: 29 s at 60,000 orders, against
0.17 s for the `$in` alone).
"""

from __future__ import annotations

from stagesync.rules.document import Document
from stagesync.rules.id_ranges import with_filter
from stagesync.rules.identity import decode_id, encode_id
from stagesync.state.resync_progress import BATCH, RESUME
from stagesync.state.versions import take_version
from stagesync.tasks.apply.context import ApplyContext
from stagesync.tasks.apply.references import followers_of, holds_embedded
from stagesync.tasks.full_resync.chunks import (
    SAMPLE_BY_ID_PERCENT,
    ChunkRun,
    EmptinessProbe,
    Outcome,
    copy_batch,
)
from stagesync.tasks.runtime import Runtime


def copies_by_parents(runtime: Runtime, context: ApplyContext, empty: bool,
                      embedded: bool | None = None) -> bool:
    """Whether this resync's copy reads only the followers of the parent's copies (module
    doc); `empty`: the target held no document when the resync began; `embedded`: what
    `embedded_at_follow` answered earlier in this resync (None: ask now)."""
    resolver = context.references
    follow = resolver.follow if resolver is not None else None
    if not empty or resolver is None or follow is None or not indexed_follow(context):
        return False
    parents = runtime.context(follow.collection).production.estimated_count()
    if resolver.parent_copies() > parents * SAMPLE_BY_ID_PERCENT / 100:
        return False
    return not (embedded_at_follow(context) if embedded is None else embedded)


def indexed_follow(context: ApplyContext) -> bool:
    """Production has an index led by the followed path (else no copy by parents)."""
    follow = context.references.follow if context.references is not None else None
    return follow is not None and any(keys[:1] == [follow.dotted]
                                      for keys in context.production.index_keys())


def embedded_at_follow(context: ApplyContext) -> bool:
    """`references.holds_embedded` at the followed path. A collection scan on the test server
    (2 s at 60,000 orders; MongoDB answers it from the path's index): an environment's
    follower asks it while its parent is still being copied."""
    assert context.references is not None and context.references.follow is not None
    return holds_embedded(context.production, context.references.follow)


def copy_by_parents(run: ChunkRun) -> Outcome:
    context = run.context
    resolver = context.references
    if resolver is None or resolver.follow is None:
        raise RuntimeError(f"{run.collection}: a copy by parents needs a followed reference")
    batch_size = int(run.chunk.get(BATCH) or run.record.get(BATCH)
                     or context.settings.resync_chunk_size)
    probe = EmptinessProbe.for_resync(run.record, context.target.collection)
    version = take_version(run.runtime.state_db, context.name)
    while parents := resolver.live_parents(run.chunk.get(RESUME)):
        query = with_filter(followers_of(resolver.follow, [decode_id(pid) for pid in parents],
                                         dbrefs=False), context.settings.filter)
        batch: dict[str, Document | None] = {}
        for document in context.production.find(query, batch_size=batch_size):
            batch[encode_id(document["_id"])] = context.masker.mask(document)
            if len(batch) >= batch_size:  # applied, the list's checkpoint not yet moved
                if not copy_batch(run, version, batch, run.chunk.get(RESUME), probe):
                    return "lost"
                batch = {}
        if not copy_batch(run, version, batch, parents[-1], probe):
            return "lost"
        if run.over_budget():
            return "more"
    return "exhausted"

