"""The live dashboard, rendered to a recording console after scripted events, and once in a real pty.

docs/dashboard.md embeds captures made by this module; `test_docs_captures_are_current` keeps them
true. Regenerate with `UPDATE_DOCS=1 .venv/bin/pytest tests/test_dashboard.py -k docs`.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.logging import RichHandler

from image_analyzer import events as ev
from image_analyzer.dashboard import Dashboard
from image_analyzer.reporters import PlainReporter
from tests.test_runstate import PID, RUN_ID, T0, Script, complete_run_script, mid_run_script

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "dashboard.md"


def render_text(
    events: list[ev.Event], *, width: int, now: float, height: int = 40, **options: object
) -> str:
    console = Console(record=True, width=width, height=height, force_terminal=False, color_system=None)
    dashboard = Dashboard(console, **options)  # type: ignore[arg-type]
    for event in events:
        dashboard.handle(event)
    console.print(dashboard.render(now=now))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


def cells(text: str, first: str) -> list[str]:
    """The cells of the table line that starts with `first` (cells are 2+ spaces apart)."""
    line = next(line for line in text.splitlines() if line.strip().startswith(first))
    return re.split(r"\s{2,}", line.strip())


def finished_properties(count: int) -> list[ev.Event]:
    script = Script()
    script.run_started()
    for i in range(count):
        script.finished_property(10 * i + 1, f"3043410809003{i:04d}")
    return script.events


def test_render_120_columns_key_cells() -> None:
    text = render_text(mid_run_script().events, width=120, now=T0 + 20)
    assert f"Run {RUN_ID} · local:images · gpt-4.1-mini" in text
    assert "Elapsed 0:00:20  ETA 0:00:27" in text
    assert "27/64 images (42%) · 5 failed" in text
    assert "In flight: 2/8 requests · 2/4 categories · properties 0/1 done · 1 skipped" in text
    assert "Spend $0.0468 · projected $0.1255 · budget left $9.9532 of $10.00" in text
    assert "Rate 4 req/min · 37.0k tok/min · 4 requests · 1 retry" in text
    assert cells(text, PID) == [PID, "bedroom", "2/2", "━━━━━━━━━━", "12/12", "19.6k", "$0.0234", "done"]
    assert cells(text, "kitchen") == [
        "kitchen",
        "1/3",
        "━━━───────",
        "10/25",
        "9.8k",
        "$0.0117",
        "1",
        "retrying in 16s: 429 rate limited",
    ]
    assert cells(text, "bathroom")[-1] == "failed: TimeoutError after 600 s"
    assert cells(text, "living_room")[-1] == "running"
    assert cells(text, "exterior")[-1] == "queued"
    assert "Recent warnings" in text
    assert "Re-asking living_room batch 1/1" in text


def test_render_80_columns_drops_low_value_columns() -> None:
    text = render_text(mid_run_script().events, width=80, now=T0 + 20)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert cells(text, "Property") == ["Property", "Category", "Batches", "Cost", "State"]
    assert cells(text, PID)[:4] == [PID, "bedroom", "2/2", "$0.0234"]
    assert cells(text, "bathroom")[-1].startswith("failed: TimeoutError")
    assert cells(text, "kitchen")[-1].startswith("retrying in 16s")
    assert "Tokens" not in text
    assert "Spend $0.0468" in text
    assert "tokens 34,000 in" not in text  # the header keeps only what fits


def test_retry_countdown_follows_the_clock() -> None:
    events = mid_run_script().events
    assert cells(render_text(events, width=120, now=T0 + 30), "kitchen")[-1].startswith("retrying in 6s")
    assert cells(render_text(events, width=120, now=T0 + 90), "kitchen")[-1] == "retrying: 429 rate limited"


def test_finished_categories_collapse_into_property_totals() -> None:
    events = finished_properties(5) + mid_run_script().events[1:]  # 30 finished categories, one live property
    text = render_text(events, width=120, now=T0 + 60)
    collapsed = [line for line in text.splitlines() if "6 categories" in line]
    assert len(collapsed) == 5
    assert cells(text, "30434108090030003") == [
        "30434108090030003",
        "6 categories",
        "6/6",
        "━━━━━━━━━━",
        "30",
        "26.4k",
        "$0.0468",
        "done",
    ]
    # The finished properties' categories are not listed one by one any more.
    assert sum(1 for line in text.splitlines() if "bedroom" in line.split()[:2]) == 1
    assert "properties 5/6 done" in text


def test_a_big_run_stays_within_the_row_cap() -> None:
    events = finished_properties(40) + mid_run_script().events[1:]
    text = render_text(events, width=120, now=T0 + 460, max_rows=8)
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("───"))
    body = lines[rule + 1 : lines.index("Recent warnings")]
    assert len(body) <= 8
    assert cells(text, "… 40 more")[:4] == ["… 40 more", "properties", "1,200", "1.1M"]
    assert cells(text, "… 40 more")[4] == "$1.8720"
    assert "properties 40/41 done" in text


def test_default_row_cap_fits_the_terminal_height() -> None:
    events = finished_properties(40) + mid_run_script().events[1:]
    text = render_text(events, width=100, now=T0 + 460, height=20)
    assert len(text.splitlines()) <= 20
    assert "… " in text  # something had to be left out, and it says so


def test_budget_pause_dry_run_and_finish_in_the_header() -> None:
    script = mid_run_script()
    script.add(19, ev.RateLimitPause, resume_at=T0 + 31, reason="429 retry-after")
    text = render_text(script.events, width=120, now=T0 + 25, rpm_limit=500, tpm_limit=200_000)
    assert "budget left $9.9532 of $10.00" in text
    assert "paused 6s: 429 retry-after" in text
    assert "4 req/min of 500" in text
    assert "tok/min of 200.0k" in text

    dry = Script()
    dry.run_started(max_cost_usd=None, dry_run=True)
    text = render_text(dry.events, width=80, now=T0)
    assert "DRY RUN" in text
    assert "budget left" not in text
    assert "waiting for work…" in text

    done = render_text(complete_run_script().events, width=100, now=T0 + 999)
    assert "finished (exit 1)" in done
    assert "Elapsed 0:00:20" in done  # the clock stopped at RunFinished
    assert "21/21 images (100%)" in done


def test_unknown_cost_is_shown_as_unknown() -> None:
    text = render_text(complete_run_script(unknown_cost=True).events, width=120, now=T0 + 30)
    assert "Spend unknown" in text
    assert "$0.0000" not in text
    assert "projected" not in text


def test_quiet_shows_header_and_warnings_only() -> None:
    text = render_text(mid_run_script().events, width=120, now=T0 + 20, quiet=True)
    assert "Spend $0.0468" in text
    assert "Recent warnings" in text
    assert "Property" not in text


def test_no_color_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    def sgr_params(no_color: bool) -> set[str]:
        if no_color:
            monkeypatch.setenv("NO_COLOR", "1")
        else:
            monkeypatch.delenv("NO_COLOR", raising=False)
        out = io.StringIO()
        console = Console(file=out, force_terminal=True, width=120, color_system="truecolor")
        dashboard = Dashboard(console)
        for event in mid_run_script().events:
            dashboard.handle(event)
        console.print(dashboard.render(now=T0 + 20))
        return {p for seq in re.findall(r"\x1b\[([0-9;]*)m", out.getvalue()) for p in seq.split(";")}

    colour = re.compile(r"^(3[0-8]|9[0-7])$")
    assert any(colour.match(p) for p in sgr_params(no_color=False))  # the control: colours without it
    assert not any(colour.match(p) for p in sgr_params(no_color=True))


def test_handle_never_raises_and_log_lines_share_the_console() -> None:
    console = Console(record=True, width=100, force_terminal=False, color_system=None)
    dashboard = Dashboard(console)
    dashboard.handle(ev.Event())
    dashboard.handle(ev.CategoryFailed(property_id="p", category="c", reason="boom"))
    dashboard.close()  # never started: nothing to stop

    handler = dashboard.logging_handler()
    assert isinstance(handler, RichHandler)
    logger = logging.getLogger("test_dashboard.handler")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("disk is slow")
    finally:
        logger.removeHandler(handler)
    assert "disk is slow" in console.export_text()


# --------------------------------------------------------------------------- a real terminal

_PTY_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
from rich.console import Console
from image_analyzer.dashboard import Dashboard
from tests.test_runstate import mid_run_script

interrupt = {interrupt!r}
if interrupt:
    console = Console()
    assert console.is_terminal, "not a terminal"
    dashboard = Dashboard(console, refresh_per_second=20)
    dashboard.start()
else:
    # What the runner does: it starts drawing at the first event.
    dashboard = Dashboard.for_stream(sys.stdout)
    assert dashboard.console.is_terminal, "not a terminal"
events = mid_run_script().events
try:
    for event in events[:3]:
        dashboard.handle(event)
    dashboard.refresh()
    for event in events[3:]:
        dashboard.handle(event)
    if interrupt:
        os.kill(os.getpid(), signal.SIGINT)
    dashboard.refresh()
except KeyboardInterrupt:
    dashboard.close()
    print("INTERRUPTED")
    sys.exit(130)
finally:
    dashboard.close()
print("BYE")
"""


def run_in_pty(*, interrupt: bool) -> tuple[int, str]:
    import fcntl
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES", "FORCE_COLOR")}
    env["TERM"] = "xterm-256color"
    script = _PTY_SCRIPT.format(root=str(ROOT), interrupt=interrupt)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")
@pytest.mark.parametrize("interrupt", [False, True])
def test_live_dashboard_in_a_real_terminal(interrupt: bool) -> None:
    code, output = run_in_pty(interrupt=interrupt)
    assert code == (130 if interrupt else 0), output
    first = output.index("0/64 images")  # drawn early in the run
    updated = output.index("27/64 images")  # and redrawn with later numbers
    assert first < updated
    if interrupt:
        assert output.index("waiting for work…") < first  # started before any event
    assert "retrying" in output[updated:]
    assert "$0.0468" in output
    hide, show = "\x1b[?25l", "\x1b[?25h"
    assert hide in output
    assert output.rindex(show) > output.rindex(hide)  # the cursor is back
    assert output.rstrip().endswith("INTERRUPTED" if interrupt else "BYE")


# --------------------------------------------------------------------------- docs/dashboard.md


def docs_captures() -> dict[str, str]:
    dashboard = render_text(finished_properties(3) + mid_run_script().events[1:], width=100, now=T0 + 40)
    narrow = render_text(mid_run_script().events, width=80, now=T0 + 20)
    out = io.StringIO()
    plain = PlainReporter(out)
    for event in complete_run_script().events:
        plain.handle(event)
    return {"dashboard-100": dashboard, "dashboard-80": narrow, "plain": out.getvalue().rstrip()}


def test_docs_captures_are_current() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name, capture in docs_captures().items():
        block = re.compile(
            rf"(<!-- capture:{name} -->\n```text\n)((?:(?!```).)*)(```\n<!-- /capture -->)", re.S
        )
        if os.environ.get("UPDATE_DOCS"):
            text = block.sub(lambda m, c=capture: m.group(1) + c + "\n" + m.group(3), text)
            DOC.write_text(text, encoding="utf-8")
        match = block.search(text)
        assert match is not None, f"docs/dashboard.md has no capture block {name!r}"
        assert match.group(2) == capture + "\n", (
            f"{name} capture in docs/dashboard.md is stale: UPDATE_DOCS=1 pytest"
        )
