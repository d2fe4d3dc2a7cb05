"""The shared helpers of the CE contract (director/ce/base.py)."""

from __future__ import annotations

from director.ce.base import split_references


def _parse(reference: str) -> tuple[str, int]:
    scheme, _, rest = reference.partition("://")
    where, _, job = rest.partition("/")
    if scheme != "x" or not job.isdigit():
        raise ValueError(f"not an x reference: {reference!r}")
    return where, int(job)


def test_references_split_into_this_ces_jobs_and_reasons_for_the_rest() -> None:
    ours, others = split_references(
        ["x://here/1", "x://there/2", "garbage", "x://here/3"], _parse, "here"
    )
    assert ours == {"x://here/1": 1, "x://here/3": 3}
    assert others == {
        "x://there/2": "reference of another CE (there), not here",
        "garbage": "not an x reference: 'garbage'",
    }
