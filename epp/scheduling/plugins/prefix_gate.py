"""The load gate of the prefix scorers: whether a pod holding part of a prompt keeps its hold.

A holder keeps it while its first token would come no later there than on any endpoint holding
less of the prompt, and its answer's end too, within the noise of the paces. Each endpoint's
first token is the wait behind its full batch (the excess over its batch limit,
`EndpointState.limit`, drained at its decode pace, as the service-time model counts it), the
prefill recent picks queued there, and its own prefill of the prompt tokens it lacks at its
prefill pace (the engine's, `EndpointState.prefill_pace`); a placement also costs the delay its
prefill adds to the requests already there, and the recomputation of the blocks it evicts.
A cold prompt (no holder has half of it) is spread by how soon its first token would come on
each endpoint (`spread_cold`).
Until prefill paces are measured, a holder is overloaded when its load exceeds the least-loaded
candidate's by more than `ratio` x that minimum + `slack`. `prefix-cache-scorer` (what this EPP
sent where) and `precise-prefix-cache-scorer` (what the pods' KV events say they hold) share
it: they differ in who holds what, not in when a hold is worth its wait. Pure arithmetic over
a snapshot.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence

from epp.scheduling.base import SchedulingRequest
from epp.scheduling.plugins.signals import fresh_cutoff
from epp.scheduling.prefill_queue import filled_paces
from epp.scheduling.service_time import TYPICAL_OUTPUT_TOKENS
from epp.scheduling.snapshot import Snapshot

# holder i holding `matched` blocks of the prompt: whether it keeps its hold
Keeps = Callable[[int, float], bool]


def answer_tokens(request: SchedulingRequest) -> int:
    """The answer's expected output tokens (the length model's plan; max_tokens is a cap)."""
    return request.expected_output_tokens or request.typical_output_tokens or TYPICAL_OUTPUT_TOKENS


def gate_loads(snap: Snapshot, now: float, staleness: float) -> Sequence[int]:
    """Each candidate's load for the gate; a stale scrape counts for nothing there, and the
    EPP's own count stands."""
    cutoff = fresh_cutoff(now, staleness)
    if snap.all_fresh(cutoff):
        return snap.load  # shared with the other scorers
    columns = zip(snap.in_flight, snap.scraped_load, snap.fresh(cutoff), strict=True)
    return [s if ok and s > f else f for f, s, ok in columns]


def holders_at(addresses: list[str], counts: Mapping[str, float]) -> list[tuple[int, float]]:
    """(candidate index, blocks held) of each holder in `counts` that is a candidate."""
    if len(counts) * 16 < len(addresses):  # few holders: let list.index scan in C
        found = []
        for address, held in counts.items():
            try:
                found.append((addresses.index(address), held))
            except ValueError:
                continue  # a holder that is not a candidate this time
        return found
    return [(i, counts[a]) for i, a in enumerate(addresses) if a in counts]


class Rivals:
    """Every endpoint's first token and answer's end for one prompt, ranked by how much of it
    they hold: answers whether a holder's first token comes no later than on any endpoint that
    holds less of the prompt, and its answer's end too, within the noise of the paces: the
    holder's end at its pace less its spread (`soon`) against each rival's at its pace plus
    its spread (`late`). Holders as deep as it or deeper are not its rivals: among them the
    prefix score and the other scorers decide, as they spread load over a prefix's holders."""

    __slots__ = ("_held", "_soonest", "costs", "late", "parts", "soon")

    def __init__(
        self,
        held: Sequence[float],
        costs: list[float],
        soon: list[float],
        late: list[float],
        parts: list[tuple[float, float]],
    ) -> None:
        self.costs = costs
        self.parts = parts  # (first token, delay to others) per endpoint, for the explain log
        self.soon = soon
        self.late = late
        order = sorted(range(len(held)), key=held.__getitem__)
        self._held = [held[j] for j in order]
        # over order[:k + 1]: the soonest first token and the soonest end, rivals' noise counted
        self._soonest: list[tuple[float, float]] = []
        first, end = float("inf"), float("inf")
        for j in order:
            first, end = min(first, costs[j]), min(end, late[j])
            self._soonest.append((first, end))

    def soonest_with_less(self, i: int, matched: float) -> bool:
        k = bisect_left(self._held, matched) - 1  # the last of those holding less
        if k < 0:
            return True
        first, end = self._soonest[k]
        return self.costs[i] <= first and self.soon[i] <= end


def holder_gate(
    request: SchedulingRequest,
    snap: Snapshot,
    loads: Sequence[int],
    counts: Mapping[str, float],
    *,
    tokens: float,
    block: int,
    queued: Callable[[str], float],
    room: Callable[[str], int],
    reuse: float,
    ratio: float,
    slack: float,
    log: logging.Logger,
) -> Keeps:
    """Whether holder i, holding `matched` blocks of the prompt, keeps its affinity.
    `counts`: blocks held per address; `tokens`: the prompt's; `block`: tokens a block;
    `queued(address)`: seconds of prefill recent picks queued there; `room(address)`: blocks
    it can take before its cache evicts; `reuse`: how likely an evicted block would have been
    found again. A holder that yields is explained on `log` at DEBUG."""
    batches = snap.limit
    waiting = snap.queued_share
    limit = min(loads) * (1.0 + ratio) + slack
    if waiting is None or not any(snap.prefill_pace):
        # no batch limit or no prefill pace known: the load-count rule
        return lambda i, matched: loads[i] <= limit or loads[i] < batches[i]
    typical = request.typical_output_tokens or TYPICAL_OUTPUT_TOKENS
    answer = answer_tokens(request)
    addresses = snap.addresses
    paces = filled_paces(snap.prefill_pace, snap.capacity)  # unmeasured ones filled in
    rivals: list[Rivals] = []  # built for the first holder asked

    def first_and_delay(j: int, held: float) -> tuple[float, float]:
        """Seconds to endpoint j's first token holding `held` blocks: the wait behind its full
        batch (the service-time model's), behind the prefill recent picks queued there, and its
        own prefill of what it lacks, at its pace. And the seconds that prefill adds to other
        requests: each request already there waits out the step that computes it, and the
        blocks it evicts from a full cache are computed again by the requests that would have
        found them (as likely as a routed prompt block is found cached: `reuse`)."""
        q = waiting[j]
        wait = q * snap.filled_tpot[j] * typical if q else 0.0
        lacks = max(tokens - held * block, 0)
        evicts = max(lacks - room(addresses[j]) * block, 0)
        first = wait + queued(addresses[j]) + lacks * paces[j]
        return first, (lacks * loads[j] + evicts * reuse) * paces[j]

    def keeps(i: int, matched: float) -> bool:
        if not rivals:
            held = [counts.get(a, 0) for a in addresses]
            # what a placement costs: this request's first token there, and the delay its
            # prefill there adds to the requests already there
            parts = [first_and_delay(j, h) for j, h in enumerate(held)]
            costs = [first + delay for first, delay in parts]
            # the answer streams at each endpoint's pace, give or take the pace's noise; a pace
            # with no spread measured yet (fewer than two samples, or filled in) is all noise:
            # nothing yields to it, and nothing yields on it
            soon, late = [], []
            columns = zip(costs, snap.filled_tpot, snap.tpot, snap.tpot_spread, strict=True)
            for f, pace, measured, spread in columns:
                noise = spread if measured > 0.0 and spread > 0.0 else pace
                soon.append(f + answer * max(0.0, pace - noise))
                late.append(f + answer * (pace + noise))
            rivals.append(Rivals(held, costs, soon, late, parts))
        ranked = rivals[0]
        kept = ranked.soonest_with_less(i, matched)
        if not kept and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "request %s: holder %s (%g blocks) yields: first tokens %s s, delays to the "
                "requests there %s s, answers' ends with both %s s (soonest; latest within "
                "the paces' noise %s s)",
                request.request_id,
                addresses[i],
                matched,
                _seconds([first for first, _ in ranked.parts]),
                _seconds([delay for _, delay in ranked.parts]),
                _seconds(ranked.soon),
                _seconds(ranked.late),
            )
        return kept

    return keeps


def spread_cold(
    request: SchedulingRequest,
    snap: Snapshot,
    scores: list[float],
    best: float,
    *,
    tokens: float,
    queued: Callable[[str], float],
    share: float,
) -> None:
    """A cold prompt (no usable holder has half of it) is computed wherever it goes. On the
    share no holder covers (`1 - best`, times `share`), add to each endpoint's score how soon
    its first token would come there against the soonest: the prefill recent picks queued
    there (`queued(address)`, seconds), in units of this prompt's own prefill of `tokens` at the
    fastest pace (cold prompts that arrive together spread over idle pods instead of queueing
    behind each other's prefill on the least-loaded one); and its slower prefill, in units of
    the whole request (prefill and answer), so a MIG slice is shunned for a long prompt and not
    for a short one whose answer dominates."""
    paces = filled_paces(snap.prefill_pace, snap.capacity)
    waits = [queued(a) for a in snap.addresses]
    fastest = min(paces)
    own = tokens * fastest  # this prompt's prefill at the fastest pace
    answer = answer_tokens(request) * snap.fastest_tpot
    inv_queue, inv_whole = 1.0 / own, 1.0 / (own + answer)
    soonest = min(waits)
    late = [
        (w - soonest) * inv_queue + tokens * (p - fastest) * inv_whole
        for w, p in zip(waits, paces, strict=True)
    ]
    if max(late) < 1e-9:
        return  # alike everywhere: the same amount added to every score changes nothing
    room = (1.0 - best) * share
    for i, d in enumerate(late):
        if d < 1.0:
            scores[i] += room * (1.0 - d)


def _seconds(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
