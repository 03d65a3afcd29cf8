"""The current-label policy: which of a turn's human labels counts as its label.

Used wherever one label per turn is needed (the results table, agreement with the models, exports, and
training exports), so that they all agree:

1. an adjudicated label wins: the latest one if an adjudicator saved several;
2. otherwise each annotator's latest label is one vote and the majority wins;
3. a tie goes to the tied label saved most recently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

# The policy in one line, as exports and model cards state it.
POLICY = (
    "adjudicated label wins (the latest); else the majority of each annotator's latest label; "
    "a tie goes to the most recent"
)


def current_annotation(rows: Sequence[dict]) -> dict | None:
    """The annotation that decides a turn's label under the policy, or None without annotations.

    `rows` are one turn's annotations, oldest first, each with `annotator`, `label` and
    `adjudicated` (a missing `adjudicated` counts as False)."""
    adjudicated = [r for r in rows if r.get("adjudicated")]
    if adjudicated:
        return adjudicated[-1]
    latest = {r["annotator"]: r for r in rows}  # later rows replace earlier ones
    if not latest:
        return None
    votes = Counter(r["label"] for r in latest.values())
    top = max(votes.values())
    # The most recent of the annotators' latest rows whose label has the top vote count.
    return next(r for r in reversed(rows) if latest[r["annotator"]] is r and votes[r["label"]] == top)


def current_by_turn(annotations: Iterable[dict]) -> dict[int, dict]:
    """{turn_id: its deciding annotation} from annotations of any turns, oldest first."""
    groups: dict[int, list[dict]] = {}
    for row in annotations:
        groups.setdefault(row["turn_id"], []).append(row)
    return {turn_id: current_annotation(rows) for turn_id, rows in groups.items()}
