"""RunState: the one aggregate the dashboard, plain lines and run summary read.

Also home of the scripted event sequences the reporter, dashboard and report tests share.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from image_analyzer import events as ev
from image_analyzer.runstate import (
    DONE,
    FAILED,
    NOTICE_LIMIT,
    QUEUED,
    RETRYING,
    RUNNING,
    RunState,
    describe,
    format_cost,
    format_count,
    format_duration,
)

T0 = 1_800_000_000.0
PID = "30434108090030050"
PID2 = "30434108090030051"
RUN_ID = "20261130-0542-a1b2"
CATEGORIES = {
    "bedroom": (12, 2),
    "kitchen": (25, 3),
    "bathroom": (5, 1),
    "living_room": (8, 1),
    "exterior": (10, 1),
    "pool": (4, 1),
}


class Script:
    """Builds a timed event sequence; times are seconds after T0."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def add(self, dt: float, event_type: type[ev.Event], /, **fields: Any) -> None:
        self.events.append(event_type(at=T0 + dt, **fields))

    def run_started(self, *, max_cost_usd: float | None = 10.0, dry_run: bool = False) -> None:
        self.add(
            0,
            ev.RunStarted,
            run_id=RUN_ID,
            source="local:images",
            model="gpt-4.1-mini",
            dry_run=dry_run,
            parallel_categories=True,
            category_workers=4,
            max_workers=8,
            max_cost_usd=max_cost_usd,
        )

    def batch(
        self,
        dt: float,
        pid: str,
        category: str,
        index: int,
        count: int,
        images: int,
        *,
        cost: float | None = 0.0117,
        prompt: int = 9000,
        completion: int = 800,
    ) -> None:
        self.add(
            dt,
            ev.BatchStarted,
            property_id=pid,
            category=category,
            batch_index=index,
            batch_count=count,
            images=images,
        )
        self.add(
            dt + 1,
            ev.RequestCost,
            property_id=pid,
            category=category,
            batch_index=index,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=0,
            cost_usd=cost,
        )
        self.add(
            dt + 1,
            ev.BatchFinished,
            property_id=pid,
            category=category,
            batch_index=index,
            batch_count=count,
            images=images,
        )

    def finished_property(
        self,
        dt: float,
        pid: str,
        categories: tuple[str, ...] = tuple(CATEGORIES),
        *,
        images_each: int = 5,
        cost_each: float | None = 0.0078,
    ) -> None:
        """A property whose categories each take one batch and succeed."""
        self.add(
            dt,
            ev.PropertyDiscovered,
            property_id=pid,
            categories=categories,
            images=images_each * len(categories),
            parallel=True,
        )
        for category in categories:
            self.add(dt, ev.CategoryQueued, property_id=pid, category=category, images=images_each, batches=1)
            self.add(dt, ev.CategoryStarted, property_id=pid, category=category)
            self.batch(dt, pid, category, 0, 1, images_each, cost=cost_each, prompt=4000, completion=400)
            self.add(
                dt + 1,
                ev.CategoryFinished,
                property_id=pid,
                category=category,
                images=images_each,
                cost_usd=cost_each,
                prompt_tokens=4000,
                completion_tokens=400,
            )
        total = None if cost_each is None else cost_each * len(categories)
        self.add(
            dt + 2,
            ev.PropertyFinished,
            property_id=pid,
            categories=len(categories),
            failed_categories=0,
            cost_usd=total,
            output_dir=f"out/{pid}",
            valid=True,
        )


def mid_run_script() -> Script:
    """One property mid-run at T0+20: bedroom done, kitchen retrying, bathroom failed,
    living_room running (with a re-ask), exterior and pool queued, one file skipped."""
    s = Script()
    s.run_started()
    s.add(1, ev.PropertyDiscovered, property_id=PID, categories=tuple(CATEGORIES), images=64, parallel=True)
    s.add(
        1,
        ev.ImageSkipped,
        location=f"images/{PID}/pool/broken.jpg",
        reason="not an image (cannot decode)",
        property_id=PID,
        category="pool",
    )
    for category, (images, batches) in CATEGORIES.items():
        s.add(1, ev.CategoryQueued, property_id=PID, category=category, images=images, batches=batches)
    for category in ("bedroom", "kitchen", "bathroom", "living_room"):
        s.add(2, ev.CategoryStarted, property_id=PID, category=category)
    s.batch(3, PID, "bedroom", 0, 2, 10)
    s.batch(9, PID, "bedroom", 1, 2, 2)
    s.add(
        12,
        ev.CategoryFinished,
        property_id=PID,
        category="bedroom",
        images=12,
        cost_usd=0.0234,
        prompt_tokens=18000,
        completion_tokens=1600,
    )
    s.batch(13, PID, "kitchen", 0, 3, 10)
    s.add(15, ev.BatchStarted, property_id=PID, category="kitchen", batch_index=1, batch_count=3, images=10)
    s.add(
        16,
        ev.RequestRetry,
        property_id=PID,
        category="kitchen",
        batch_index=1,
        attempt=1,
        delay_s=20.0,
        reason="429 rate limited",
    )
    s.add(3, ev.BatchStarted, property_id=PID, category="bathroom", batch_index=0, batch_count=1, images=5)
    s.add(
        17,
        ev.BatchFailed,
        property_id=PID,
        category="bathroom",
        batch_index=0,
        reason="TimeoutError after 600 s",
    )
    s.add(17, ev.CategoryFailed, property_id=PID, category="bathroom", reason="TimeoutError after 600 s")
    s.add(4, ev.BatchStarted, property_id=PID, category="living_room", batch_index=0, batch_count=1, images=8)
    s.add(
        18,
        ev.RequestCost,
        property_id=PID,
        category="living_room",
        batch_index=0,
        prompt_tokens=7000,
        completion_tokens=600,
        cached_tokens=0,
        cost_usd=0.0117,
    )
    s.add(
        18,
        ev.AnswerRejected,
        property_id=PID,
        category="living_room",
        batch_index=0,
        kind="schema",
        detail="layout 'space_type' is not one of the allowed values",
    )
    return s


def complete_run_script(*, unknown_cost: bool = False) -> Script:
    """Two properties from start to RunFinished: one with a retry and a failed category."""
    cost = None if unknown_cost else 0.0117
    s = Script()
    s.run_started(max_cost_usd=None)
    s.add(
        1, ev.PropertyDiscovered, property_id=PID, categories=("bedroom", "kitchen"), images=17, parallel=True
    )
    s.add(
        1, ev.ImageSkipped, location=f"images/{PID}/kitchen/notes.txt", reason="not an image", property_id=PID
    )
    s.add(1, ev.CategoryQueued, property_id=PID, category="bedroom", images=12, batches=2)
    s.add(1, ev.CategoryQueued, property_id=PID, category="kitchen", images=5, batches=1)
    s.add(2, ev.CategoryStarted, property_id=PID, category="bedroom")
    s.add(2, ev.CategoryStarted, property_id=PID, category="kitchen")
    s.add(
        3,
        ev.RequestRetry,
        property_id=PID,
        category="bedroom",
        batch_index=1,
        attempt=1,
        delay_s=2.0,
        reason="429 rate limited",
    )
    s.batch(3, PID, "bedroom", 0, 2, 10, cost=cost)
    s.batch(6, PID, "bedroom", 1, 2, 2, cost=cost)
    s.add(
        8,
        ev.CategoryFinished,
        property_id=PID,
        category="bedroom",
        images=12,
        cost_usd=None if unknown_cost else 0.0234,
        prompt_tokens=18000,
        completion_tokens=1600,
    )
    s.add(9, ev.CategoryFailed, property_id=PID, category="kitchen", reason="TimeoutError after 600 s")
    s.add(
        10,
        ev.PropertyFinished,
        property_id=PID,
        categories=2,
        failed_categories=1,
        cost_usd=None if unknown_cost else 0.0234,
        output_dir=f"out/{PID}",
        valid=True,
    )
    s.finished_property(11, PID2, ("bedroom",), images_each=4, cost_each=None if unknown_cost else 0.0078)
    s.add(20, ev.RunFinished, run_id=RUN_ID, summary={}, exit_code=1)
    return s


def fold(events: list[ev.Event], **kwargs: Any) -> RunState:
    state = RunState(**kwargs)
    for event in events:
        state.apply(event)
    return state


# --------------------------------------------------------------------------- tests


def test_mid_run_counts_states_and_lists() -> None:
    state = fold(mid_run_script().events)

    assert (state.run_id, state.model, state.max_workers, state.category_workers) == (
        RUN_ID,
        "gpt-4.1-mini",
        8,
        4,
    )
    assert state.images_total == 64
    assert state.images_done == 22  # bedroom 12 + kitchen batch 1
    assert state.images_failed == 5  # bathroom
    assert state.usage.requests == 4
    assert state.usage.cost_usd == pytest.approx(0.0468)
    assert state.usage.cost_known
    assert state.requests_in_flight == 2  # kitchen batch 2 (retrying), living_room batch 1
    assert state.categories_running == 2
    states = {category: row.state for (_, category), row in state.rows.items()}
    assert states == {
        "bedroom": DONE,
        "kitchen": RETRYING,
        "bathroom": FAILED,
        "living_room": RUNNING,
        "exterior": QUEUED,
        "pool": QUEUED,
    }
    kitchen = state.rows[(PID, "kitchen")]
    assert kitchen.resume_at == T0 + 36
    assert (kitchen.batches_done, kitchen.batches, kitchen.retries) == (1, 3, 1)
    assert state.failed_categories == [
        {"property_id": PID, "category": "bathroom", "reason": "TimeoutError after 600 s"}
    ]
    assert [s["location"] for s in state.skipped_images] == [f"images/{PID}/pool/broken.jpg"]
    assert state.reasks == 1
    assert [n.text.split(" ")[0] for n in state.notices] == ["Skipped", "Retrying", "Category", "Re-asking"]


def test_category_finished_does_not_double_count_request_costs() -> None:
    state = fold(mid_run_script().events)
    bedroom = state.rows[(PID, "bedroom")]
    assert bedroom.usage.requests == 2
    assert bedroom.usage.prompt_tokens == 18000
    assert bedroom.usage.cost_usd == pytest.approx(0.0234)


def test_category_totals_are_taken_when_no_request_costs_came() -> None:
    s = Script()
    s.run_started()
    s.add(1, ev.CategoryQueued, property_id=PID, category="pool", images=4, batches=1)
    s.add(
        5,
        ev.CategoryFinished,
        property_id=PID,
        category="pool",
        images=4,
        cost_usd=0.01,
        prompt_tokens=3000,
        completion_tokens=300,
    )
    state = fold(s.events)
    assert state.usage.cost_usd == pytest.approx(0.01)
    assert state.usage.prompt_tokens == 3000
    assert state.images_done == 4
    assert state.images_total == 4  # known from the queue alone, no PropertyDiscovered


def test_retrying_category_runs_again_on_next_sign_of_life() -> None:
    s = mid_run_script()
    s.batch(40, PID, "kitchen", 1, 3, 10)
    state = fold(s.events)
    kitchen = state.rows[(PID, "kitchen")]
    assert kitchen.state == RUNNING
    assert kitchen.resume_at is None
    assert kitchen.reason is None


def test_eta_uses_pace_so_far_with_injected_now() -> None:
    state = fold(mid_run_script().events)
    # 27 of 64 images settled in 20 s -> 37 more at 27/20 per second.
    assert state.eta_s(now=T0 + 20) == pytest.approx(37 * 20 / 27)
    assert state.elapsed_s(now=T0 + 20) == 20
    assert RunState().eta_s(now=T0) is None


def test_reused_batches_do_not_set_the_pace_or_the_price() -> None:
    s = Script()
    s.run_started()
    s.add(1, ev.PropertyDiscovered, property_id=PID, categories=("bedroom",), images=30, parallel=False)
    s.add(1, ev.CategoryQueued, property_id=PID, category="bedroom", images=30, batches=3)
    s.add(1, ev.BatchReused, property_id=PID, category="bedroom", batch_index=0, images=10)
    s.batch(2, PID, "bedroom", 1, 3, 10, cost=0.02)
    state = fold(s.events)
    assert state.images_done == 20
    assert state.reused_batches == 1
    # 10 worked images in 10 s; 10 left -> 10 s.
    assert state.eta_s(now=T0 + 10) == pytest.approx(10)
    # $0.02 for 10 paid images; 10 to go.
    assert state.projected_cost_usd() == pytest.approx(0.04)


def test_unknown_cost_is_never_shown_as_zero() -> None:
    state = fold(complete_run_script(unknown_cost=True).events)
    assert not state.usage.cost_known
    assert state.usage.cost_usd == 0
    assert format_cost(state.usage.cost_usd, state.usage.cost_known) == "unknown"
    assert state.projected_cost_usd() is None
    assert state.summary()["cost_known"] is False


def test_partly_unknown_cost_is_a_lower_bound() -> None:
    s = mid_run_script()
    s.add(
        19,
        ev.RequestCost,
        property_id=PID,
        category="exterior",
        batch_index=0,
        prompt_tokens=10,
        completion_tokens=1,
        cached_tokens=0,
        cost_usd=None,
    )
    state = fold(s.events)
    assert format_cost(state.usage.cost_usd, state.usage.cost_known) == "≥$0.0468"


def test_rates_count_a_sliding_minute() -> None:
    s = Script()
    s.run_started()
    for dt in (0, 30, 70):
        s.add(
            dt,
            ev.RequestCost,
            property_id=PID,
            category="bedroom",
            batch_index=0,
            prompt_tokens=1000,
            completion_tokens=100,
            cached_tokens=0,
            cost_usd=0.001,
        )
    state = fold(s.events)
    assert state.requests_per_minute(now=T0 + 70) == 2
    assert state.tokens_per_minute(now=T0 + 70) == 2200
    assert state.requests_per_minute(now=T0 + 200) == 0


def test_budget_and_pause() -> None:
    s = mid_run_script()
    s.add(19, ev.RateLimitPause, resume_at=T0 + 31, reason="429 retry-after")
    state = fold(s.events)
    assert state.budget_left_usd() == pytest.approx(10 - 0.0468)
    assert state.pause_left_s(now=T0 + 25) == pytest.approx(6)
    assert state.pause_left_s(now=T0 + 40) is None


def test_complete_run_settles_progress_and_summary() -> None:
    state = fold(complete_run_script().events)
    assert state.progress() == 1.0
    assert state.images_total == 17 + 4
    assert state.eta_s(now=T0 + 999) == 0.0
    assert state.exit_code == 1
    assert state.elapsed_s(now=T0 + 999) == 20  # the clock stops at RunFinished
    assert state.requests_in_flight == 0

    summary = state.summary()
    json.dumps(summary)  # the run summary file must be plain JSON
    assert summary["images"] == 21
    assert summary["images_analysed"] == 16
    assert summary["requests"] == 3
    assert summary["prompt_tokens"] == 18000 + 4000
    assert summary["completion_tokens"] == 1600 + 400
    assert summary["cost_usd"] == pytest.approx(0.0312)
    assert summary["cost_known"] is True
    assert summary["retries"] == 1
    assert summary["failed_categories"] == [
        {"property_id": PID, "category": "kitchen", "reason": "TimeoutError after 600 s"}
    ]
    assert summary["skipped_images"][0]["reason"] == "not an image"
    first = summary["properties"][PID]
    assert first["failed_categories"] == ["kitchen"]
    assert first["status"] == "partial"
    assert first["skipped"] == 1
    assert first["duration_s"] == 9
    assert first["categories"]["bedroom"] == {
        "images": 12,
        "images_analysed": 12,
        "batches": 2,
        "batches_done": 2,
        "reused_batches": 0,
        "requests": 2,
        "prompt_tokens": 18000,
        "completion_tokens": 1600,
        "cached_tokens": 0,
        "cost_usd": 0.0234,
        "cost_known": True,
        "retries": 1,
        "reasks": 0,
        "status": "done",
        "reason": None,
    }
    assert first["categories"]["kitchen"]["status"] == "failed"
    assert summary["properties"][PID2]["status"] == "done"


def test_notices_are_bounded_and_repeats_folded() -> None:
    s = Script()
    s.run_started()
    for _ in range(3):
        s.add(1, ev.Notice, level="warning", message="slow disk")
    for i in range(NOTICE_LIMIT + 20):
        s.add(2, ev.ImageSkipped, location=f"x/{i}.jpg", reason="empty file")
    state = fold(s.events)
    assert len(state.notices) == NOTICE_LIMIT
    assert state.notices[-1].text == f"Skipped x/{NOTICE_LIMIT + 19}.jpg: empty file"
    assert len(state.skipped_images) == NOTICE_LIMIT + 20  # the summary keeps every one

    folded = fold(s.events[:4])
    assert [(n.text, n.count) for n in folded.notices] == [("slow disk", 3)]


def test_info_notices_are_not_warnings() -> None:
    s = Script()
    s.add(1, ev.Notice, level="info", message="resuming run")
    assert not fold(s.events).notices


def test_run_state_is_a_reporter_on_the_bus() -> None:
    state = RunState()
    bus = ev.EventBus([state])
    for event in mid_run_script().events:
        bus.emit(event)
    bus.close()
    assert state.usage.requests == 4


def test_describe_words() -> None:
    state = RunState()
    one = ev.PropertyDiscovered(property_id=PID, categories=("pool",), images=1, parallel=False)
    assert [line.text for line in describe(one, state)] == [
        f"Found 1 category folder for {PID}: pool",
        f"Processing 1 category sequentially for {PID}",
    ]
    many = ev.PropertyDiscovered(
        property_id=PID, categories=tuple(f"c{i}" for i in range(20)), images=1, parallel=True
    )
    assert describe(many, state)[0].text.endswith("c11, ... (+8 more)")
    none = ev.PropertyDiscovered(property_id=PID, categories=(), images=0, parallel=True)
    assert describe(none, state)[0].level == "warning"
    assert describe(ev.Notice(level="ERROR", message="boom"), state)[0].level == "error"
    assert (
        describe(
            ev.RequestCost(
                property_id=PID,
                category="a",
                batch_index=0,
                prompt_tokens=1,
                completion_tokens=1,
                cached_tokens=0,
                cost_usd=None,
            ),
            state,
        )
        == ()
    )


def test_invalid_output_is_a_warning() -> None:
    state = RunState()
    event = ev.PropertyFinished(
        property_id=PID,
        categories=1,
        failed_categories=0,
        cost_usd=0.01,
        output_dir=None,
        valid=False,
        problems=("layout: missing space_type", "lot: bad value"),
    )
    lines = state.apply_and_describe(event)
    assert lines[-1].text == f"Output for {PID} is not valid: layout: missing space_type (+1 more)"
    assert state.properties[PID].status == "invalid"


@pytest.mark.parametrize(
    ("value", "known", "text"),
    [
        (0.0234, True, "$0.0234"),
        (0.0, True, "$0.0000"),
        (0.0, False, "unknown"),
        (None, True, "unknown"),
        (1234.5, True, "$1,234.50"),
        (0.5, False, "≥$0.5000"),
    ],
)
def test_format_cost(value: float | None, known: bool, text: str) -> None:
    assert format_cost(value, known) == text


def test_format_duration_and_count() -> None:
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(None) == "-"
    assert format_duration(float("inf")) == "-"
    assert [format_count(v) for v in (950, 12_345, 4_500_000)] == ["950", "12.3k", "4.5M"]
