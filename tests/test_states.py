"""The frame and job state machine: the transition tables and how a job follows its frames."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distren import states
from distren.errors import Conflict, DistrenError
from distren.states import BLOCKED, CANCELLED, DONE, FAILED, PAUSED, QUEUED, RENDERING


def documented(section: str) -> dict[str, set[str]]:
    """The transitions drawn in states.py's docstring under ``section`` ("Frames:" or "Jobs:"):
    chains of ``a -> b -> c``, several per line separated by commas, comments in parentheses."""
    table: dict[str, set[str]] = {}
    inside = False
    for line in states.__doc__.splitlines():
        if line.startswith(("Frames:", "Jobs:")):
            inside = line.startswith(section)
            line = line.split(":", 1)[1]
        elif line and not line.startswith(" "):
            inside = False
        if not inside:
            continue
        for chain in re.sub(r"\(.*", "", line).split(","):
            names = [part.strip() for part in chain.split("->")]
            for a, b in zip(names, names[1:]):
                table.setdefault(a, set()).add(b)
    return table


# Read from the docstring a person reads, not written out a second time: the tests fail when
# the tables and the documented machine disagree.
EXPECTED_FRAME = {s: set() for s in states.FRAME_STATES} | documented("Frames:")
EXPECTED_JOB = {s: set() for s in states.JOB_STATES} | documented("Jobs:")

FRAME_PAIRS = list(itertools.product(states.FRAME_STATES, repeat=2))
JOB_PAIRS = list(itertools.product(states.JOB_STATES, repeat=2))


def test_state_lists():
    assert set(states.FRAME_STATES) == {QUEUED, RENDERING, DONE, FAILED, BLOCKED}
    assert set(states.JOB_STATES) == {QUEUED, RENDERING, DONE, FAILED, CANCELLED, PAUSED}
    assert set(states.FINAL_JOB_STATES) == {DONE, FAILED, CANCELLED}
    assert set(states.FRAME_TRANSITIONS) == set(states.FRAME_STATES)
    assert set(states.JOB_TRANSITIONS) == set(states.JOB_STATES)


def test_the_docstring_draws_both_machines():
    assert documented("Frames:")[QUEUED] == {RENDERING, BLOCKED}
    assert documented("Jobs:")[FAILED] == {QUEUED, RENDERING, CANCELLED, PAUSED}
    assert documented("Jobs:")[PAUSED] == {QUEUED, RENDERING, FAILED, DONE, CANCELLED}
    assert set(EXPECTED_FRAME) == set(states.FRAME_STATES) and set(EXPECTED_JOB) == set(states.JOB_STATES)


def test_tables_match_the_documented_machine():
    assert {k: set(v) for k, v in states.FRAME_TRANSITIONS.items()} == EXPECTED_FRAME
    assert {k: set(v) for k, v in states.JOB_TRANSITIONS.items()} == EXPECTED_JOB


@pytest.mark.parametrize(("old", "new"), FRAME_PAIRS, ids=[f"{a}->{b}" for a, b in FRAME_PAIRS])
def test_check_frame(old, new):
    if new in EXPECTED_FRAME[old]:
        states.check_frame(old, new)
        states.check_frame(old, new, "frame 3 of job 7")
    else:
        with pytest.raises(Conflict) as err:
            states.check_frame(old, new, "frame 3 of job 7")
        msg = str(err.value)
        assert old in msg and new in msg and "frame 3 of job 7" in msg
        assert msg == f"frame 3 of job 7 is {old}; it cannot become {new}"
        assert err.value.status == 409


@pytest.mark.parametrize(("old", "new"), JOB_PAIRS, ids=[f"{a}->{b}" for a, b in JOB_PAIRS])
def test_check_job(old, new):
    if new in EXPECTED_JOB[old]:
        states.check_job(old, new)
        states.check_job(old, new, "job 7")
    else:
        with pytest.raises(Conflict) as err:
            states.check_job(old, new, "job 7")
        msg = str(err.value)
        assert old in msg and new in msg and "job 7" in msg
        assert msg == f"job 7 is {old}; it cannot become {new}"


def test_no_state_moves_to_itself():
    for s in states.FRAME_STATES:
        with pytest.raises(Conflict):
            states.check_frame(s, s)
    for s in states.JOB_STATES:
        with pytest.raises(Conflict):
            states.check_job(s, s)


def test_frames_are_never_cancelled():
    for s in states.FRAME_STATES:
        with pytest.raises(Conflict, match="cancelled"):
            states.check_frame(s, CANCELLED)


@pytest.mark.parametrize("bad", ["", "bogus", "QUEUED", None])
def test_unknown_states_are_conflicts_not_crashes(bad):
    with pytest.raises(Conflict):
        states.check_frame(bad, QUEUED)
    with pytest.raises(Conflict):
        states.check_job(bad, QUEUED)
    with pytest.raises(Conflict):
        states.check_frame(QUEUED, bad)
    with pytest.raises(Conflict):
        states.check_job(QUEUED, bad)


def test_default_what():
    with pytest.raises(Conflict, match=r"^frame is done; it cannot become failed$"):
        states.check_frame(DONE, FAILED)
    with pytest.raises(Conflict, match=r"^job is done; it cannot become rendering$"):
        states.check_job(DONE, RENDERING)


def test_conflict_is_a_distren_error():
    assert issubclass(Conflict, DistrenError)


def test_job_can_follow_its_frames_from_every_live_state():
    """The store moves a live job to whatever job_state_for says (done is held back as rendering
    until the result is rebundled). Every such move must be allowed by the job table."""
    followable = {QUEUED, RENDERING, FAILED}
    for old in (QUEUED, RENDERING, FAILED):
        for new in followable - {old}:
            states.check_job(old, new)
    # ...and cancelling is possible from every live state, done only from the non-failed ones.
    for old in (QUEUED, RENDERING, FAILED):
        states.check_job(old, CANCELLED)
    for old in (QUEUED, RENDERING):
        states.check_job(old, DONE)


# --- job_state_for ---------------------------------------------------------------------------

counts_st = st.dictionaries(st.sampled_from(states.FRAME_STATES), st.integers(0, 6))
nonempty_counts_st = counts_st.filter(lambda c: sum(c.values()) > 0)


def n(c, s):
    return c.get(s, 0)


@settings(max_examples=150)
@given(counts_st)
def test_job_state_for_is_a_frame_derived_job_state(c):
    assert states.job_state_for(c) in (QUEUED, RENDERING, DONE, FAILED)


@given(st.integers(1, 1000))
def test_all_done_is_done(k):
    assert states.job_state_for({DONE: k}) == DONE
    assert states.job_state_for({DONE: k, QUEUED: 0, RENDERING: 0, FAILED: 0}) == DONE


@settings(max_examples=150)
@given(counts_st)
def test_any_rendering_is_rendering(c):
    if n(c, RENDERING):
        assert states.job_state_for(c) == RENDERING


def stuck(c):
    return n(c, FAILED) + n(c, BLOCKED)


@settings(max_examples=150)
@given(counts_st)
def test_only_failed_and_done_with_a_failure_is_failed(c):
    if n(c, FAILED) >= 1 and not n(c, QUEUED) and not n(c, RENDERING) and not n(c, BLOCKED):
        assert states.job_state_for(c) == FAILED


@settings(max_examples=150)
@given(counts_st)
def test_nothing_left_to_run_but_stuck_frames_is_failed(c):
    """Blocked frames (waiting on a failed dependency) count as stuck, like failed ones."""
    if stuck(c) >= 1 and not n(c, QUEUED) and not n(c, RENDERING):
        assert states.job_state_for(c) == FAILED


@settings(max_examples=150)
@given(counts_st)
def test_nothing_started_is_queued(c):
    if not n(c, RENDERING) and not n(c, DONE) and not stuck(c):
        assert states.job_state_for(c) == QUEUED


@settings(max_examples=150)
@given(counts_st)
def test_job_state_for_characterised(c):
    """The complete rule: each outcome exactly when its condition holds."""
    total = sum(c.values())
    got = states.job_state_for(c)
    assert (got == DONE) == (total > 0 and n(c, DONE) == total)
    assert (got == QUEUED) == (n(c, RENDERING) == n(c, DONE) == stuck(c) == 0)
    assert (got == FAILED) == (stuck(c) > 0 and n(c, QUEUED) == 0 and n(c, RENDERING) == 0)
    # Everything else - some progress, and something still queued or rendering - is rendering.
    if got == RENDERING:
        assert n(c, QUEUED) + n(c, RENDERING) > 0
        assert n(c, RENDERING) > 0 or n(c, DONE) + stuck(c) > 0


@settings(max_examples=200)
@given(counts_st, st.sampled_from(states.FRAME_STATES))
def test_zero_entries_do_not_matter(c, s):
    without = {k: v for k, v in c.items() if v}
    assert states.job_state_for(c) == states.job_state_for(without)
    assert states.job_state_for({s: 0, **without}) == states.job_state_for(without)


@settings(max_examples=200)
@given(nonempty_counts_st, st.integers(2, 5))
def test_scaling_counts_does_not_change_the_state(c, k):
    assert states.job_state_for(c) == states.job_state_for({s: v * k for s, v in c.items()})


@settings(max_examples=200)
@given(nonempty_counts_st)
def test_a_frame_finishing_never_moves_the_job_backwards(c):
    """Finishing a rendering frame (rendering -> done) never sends a job back to queued."""
    if n(c, RENDERING):
        after = dict(c)
        after[RENDERING] -= 1
        after[DONE] = n(c, DONE) + 1
        assert states.job_state_for(after) != QUEUED


def test_job_state_for_examples():
    assert states.job_state_for({}) == QUEUED
    assert states.job_state_for({QUEUED: 3}) == QUEUED
    assert states.job_state_for({QUEUED: 2, RENDERING: 1}) == RENDERING
    assert states.job_state_for({QUEUED: 2, DONE: 1}) == RENDERING
    assert states.job_state_for({QUEUED: 2, FAILED: 1}) == RENDERING  # a retried job is under way
    assert states.job_state_for({FAILED: 1, RENDERING: 1}) == RENDERING
    assert states.job_state_for({FAILED: 1, DONE: 4}) == FAILED
    assert states.job_state_for({FAILED: 2}) == FAILED
    assert states.job_state_for({FAILED: 1, BLOCKED: 2, DONE: 1}) == FAILED
    assert states.job_state_for({BLOCKED: 1, QUEUED: 1}) == RENDERING
    assert states.job_state_for({DONE: 5}) == DONE
