"""`kata.py grade`: the fixture roster (written by tests/fixtures/make_roster.py from
reference/scheduler.py: kata 10, one correct learner, one partial, one that hangs) gives a stable CSV, sorted JSON and an HTML heatmap that renders
in a real headless browser; submissions run in child processes under limits, on copies."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import grade
from harness.katas import ROOT

FIXTURES = ROOT / "tests" / "fixtures"
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)

EXPECTED_CSV = """\
learner,kata,task,score,passed,checks,failed,todo,timeout,import_error,not_run,status
ada,10,1,1.0000,14,14,0,0,0,0,0,done
ada,10,3,1.0000,6,6,0,0,0,0,0,done
ben,10,1,1.0000,14,14,0,0,0,0,0,done
ben,10,3,0.1667,1,6,5,0,0,0,0,partial
cy,10,1,0.0000,0,14,0,0,14,0,0,timeout
cy,10,3,0.0000,0,6,0,0,6,0,0,timeout
"""


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_grade(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", "grade", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def roster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three learners, made from today's reference by make_roster.py (never stale)."""
    spec = importlib.util.spec_from_file_location("make_roster", FIXTURES / "make_roster.py")
    assert spec and spec.loader
    make_roster = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_roster)
    folder = tmp_path_factory.mktemp("roster")
    make_roster.write(folder)
    return folder


@pytest.fixture(scope="module")
def graded(roster: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, bytes]]:
    out = tmp_path_factory.mktemp("grades")
    before = files_of(roster)
    proc = run_grade(str(roster), "--katas", "10", "--tasks", "1,3", "--timeout", "20",
                     "--jobs", "3", "--out", str(out))
    return out, proc.stdout + proc.stderr, before


def test_the_roster_grades_to_a_stable_csv(graded, roster: Path) -> None:
    out, log, before = graded
    assert (out / "grades.csv").read_text() == EXPECTED_CSV, log
    assert "cy                   kata 10 0/20 TIMEOUT" in log, log
    assert files_of(roster) == before, "grading wrote into the roster"


def test_the_json_has_sorted_keys_and_partial_credit(graded) -> None:
    out, log, _ = graded
    text = (out / "grades.json").read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=1, sort_keys=True) + "\n"
    assert data["learners"]["ben"]["10"]["tasks"]["3"]["score"] == pytest.approx(1 / 6, abs=1e-3)
    assert data["learners"]["ben"]["10"]["tasks"]["3"]["failing"], data
    assert data["learners"]["cy"]["10"]["status"] == "timeout"
    assert data["learners"]["cy"]["10"]["seconds"] < 60


def test_the_html_report_has_the_heatmap_and_most_failed_checks(graded) -> None:
    out, _, _ = graded
    page = (out / "grades.html").read_text()
    assert "<table id=\"heatmap\">" in page and "TIMEOUT" in page and "17%" in page
    assert "<ol id=\"most-failed\"><li><code>kata 10 TestTask3Preemption::" in page
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # self-contained


def screenshot(page: Path, png: Path) -> str:
    proc = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox",
                           f"--screenshot={png}", "--window-size=1100,800",
                           "--enable-logging=stderr", "--v=0", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    return proc.stdout + proc.stderr


def console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_the_html_report_renders_in_a_headless_browser(graded, tmp_path: Path) -> None:
    out, _, _ = graded
    # The detector works: a page with a script error is caught.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>throw new Error('boom')</script></body></html>")
    assert console_errors(screenshot(bad, tmp_path / "bad.png"))
    png = tmp_path / "grades.png"
    log = screenshot(out / "grades.html", png)
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", log
    assert png.stat().st_size > 10_000, log  # something was drawn
    assert not console_errors(log), log


def test_bad_submissions_are_contained(tmp_path: Path) -> None:
    """An import error, a memory hog and a module that writes into its folder and a
    neighbour's: each is reported as such, and the roster is left as it was."""
    source = (ROOT / "reference" / "scheduler.py").read_text()
    roster = tmp_path / "roster"
    for name, text in {
        "broken": "def oops(:\n",
        "hog": source + "\n_blob = bytearray(16 * 1024 ** 3)\n",
        "writer": source + ("\nfrom pathlib import Path as _P\n"
                            "_here = _P(__file__).resolve().parent\n"
                            "(_here / 'written.txt').write_text('x')\n"
                            "(_here.parent / 'broken').mkdir(exist_ok=True)\n"
                            "(_here.parent / 'broken' / 'scheduler.py').write_text('# overwritten')\n"),
    }.items():
        (roster / name).mkdir(parents=True)
        (roster / name / "scheduler.py").write_text(text)
    (roster / "empty").mkdir()
    before = files_of(roster)
    out = tmp_path / "out"
    proc = run_grade(str(roster), "--katas", "10", "--tasks", "1", "--timeout", "60",
                     "--jobs", "3", "--out", str(out), "--report", "csv,json")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert files_of(roster) == before, "a submission wrote into the roster"
    rows = {r.split(",")[0]: r for r in (out / "grades.csv").read_text().splitlines()[1:]}
    assert rows["broken"].endswith(",import_error"), rows
    assert rows["hog"].endswith(",import_error"), rows  # MemoryError at import, not a dead machine
    assert rows["writer"].endswith(",done"), rows
    assert rows["empty"].endswith(",missing"), rows
    data = json.loads((out / "grades.json").read_text())["learners"]
    assert "MemoryError" in data["hog"]["10"]["tasks"]["1"]["import_error_message"], data["hog"]
    assert "SyntaxError" in data["broken"]["10"]["tasks"]["1"]["import_error_message"]
    assert not (out / "grades.html").exists()  # only the reports asked for


def test_scores_count_checks_killed_by_the_time_limit_as_timeouts() -> None:
    checks = grade.KataChecks(tasks={"1": ["katas/10_scheduler/t.py::TestTask1A::test_a",
                                           "katas/10_scheduler/t.py::TestTask1A::test_b"]})
    run = grade.RunResult("timeout", -9, 20.0, None, "")
    [row] = grade.score("10", checks, run, None, gpu=False)
    assert row["timeout"] == 2 and row["score"] == 0 and row["status"] == "timeout"
    assert row["failing"] == []  # a killed run names no failing check
    report = {"results": [{"nodeid": "katas/10_scheduler/t.py::TestTask1A::test_a", "outcome": "passed"},
                          {"nodeid": "katas/10_scheduler/t.py::TestTask1A::test_b", "outcome": "failed"}]}
    [row] = grade.score("10", checks, grade.RunResult("ok", 1, 1.0, report, ""), None, gpu=False)
    assert row["score"] == 0.5 and row["status"] == "partial" and row["failing"] == ["TestTask1A::test_b"]


def test_help() -> None:
    proc = run_grade("--help")
    assert proc.returncode == 0 and "not a security sandbox" in proc.stdout.lower().replace("\n", " ")
