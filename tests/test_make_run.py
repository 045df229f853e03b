"""The main job end to end, as a new on-call SRE meets it: `neuralops run` (what `make run`
calls) brings up the whole loop and ends with a remediation paused for approval; in the real
Prefect UI (Playwright driving Debian's chromium, headless, kept off the network) the operator
reads the evidence in the paused run's artifacts (the signal's hint, the policy verdict, the
diff against the workload's current spec: 512Mi → 2Gi), submits the Resume form with a bad
token (refused: a visible notice, the form still usable), pastes the printed approve line
with a bad token (refused, one line, exit 2), then the printed line as printed into a new
terminal holding only PATH, HOME and NEURALOPS_DATA_DIR: the run resumes and the incident
succeeds. Ctrl-C stops everything the command started. Screenshots go to
reports/screenshots/ (the README shows them).

Self-contained, for a suite that may run it beside other tests: its own data dir, Prefect
home and free port; every wait is on a condition, never a fixed sleep.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from conftest import skip_or_fail

from neuralops.local_prometheus import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "reports" / "screenshots"
NEURALOPS = Path(sys.executable).with_name("neuralops")
# The flags that keep Chromium off the network here (no sync, updates or background fetches).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BEFORE_APPROVAL = (
    "remediation-incident",
    "remediation-recommendation",
    "remediation-dry-run",
    "remediation-approval",
)
READY_S = 1200  # a fresh server, deploy, workers, seeding and the triggered run on 2 cores
WIDE = 1440
T = TypeVar("T")


class Output:
    """The command's output, read on a thread so the test can wait for a line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, process: subprocess.Popen[str], timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if found := re.search(pattern, self.text, re.MULTILINE):
                return found.group(1)
            if process.poll() is not None:
                self._thread.join(5)  # let the reader drain the last lines
                pytest.fail(f"`neuralops run` exited {process.returncode}:\n{self.text[-4000:]}")
            time.sleep(0.2)
        pytest.fail(f"no {pattern!r} within {timeout_s:.0f} s:\n{self.text[-4000:]}")


def poll(condition: Callable[[], T], timeout_s: float, what: str, step_s: float = 0.5) -> T:
    """``condition()`` once it is truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(step_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def tampered(token: str) -> str:
    """The token with its ES256 signature replaced: well-formed, but it does not verify."""
    return token.rsplit(".", 1)[0] + "." + "A" * 86


def new_terminal(data_dir: Path, home: Path) -> dict[str, str]:
    """What a new terminal holds: PATH (without this venv: nothing activated), HOME (a fresh
    one: no Prefect profile) and NEURALOPS_DATA_DIR; no PREFECT_* at all."""
    home.mkdir(parents=True, exist_ok=True)
    venv_bin = NEURALOPS.parent.resolve()
    path = os.pathsep.join(
        p
        for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if p and Path(p).resolve() != venv_bin
    )
    return {"PATH": path, "HOME": str(home), "NEURALOPS_DATA_DIR": str(data_dir)}


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        skip_or_fail("Debian's chromium is not installed (make system-deps installs it)")
    return path


def test_run_pauses_a_remediation_approved_after_refusals_in_the_ui_and_the_cli(
    tmp_path: Path, chromium: str
) -> None:
    from playwright.sync_api import Locator, expect, sync_playwright

    began = time.monotonic()

    def lap(what: str) -> None:  # where the time goes: shown when the test fails (or with -s)
        print(f"{time.monotonic() - began:6.1f} s  {what}")

    port = free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NEURALOPS_"))}
    env |= {
        "NEURALOPS_DATA_DIR": str(data),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),  # no profile or state shared with others
        "COLUMNS": "200",
        "HF_HUB_OFFLINE": "1",
        "NEURALOPS_SETTLE_S": "0",  # the mock cluster applies at once: no settling to wait for
    }
    env.pop("POSTGRES_DSN", None)
    env.pop("PROM_URL", None)
    process = subprocess.Popen(
        [str(NEURALOPS), "run", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    output = Output(process)
    try:
        token = output.wait_for(r"^APPROVAL_TOKEN=(\S+)", process, READY_S)
        paused_url = output.wait_for(r"^Paused run\s+(http://\S+)", process, 10)
        approver = output.wait_for(r"Approver id (\S+), and this", process, 10)
        incident_id = output.wait_for(r"^Incident\s+(\S+) \(raise-memory-limit", process, 10)
        approve_line = output.wait_for(r"^(\S+ \S*neuralops approve .*)$", process, 10)
        ui = f"http://127.0.0.1:{port}"
        assert paused_url.startswith(f"{ui}/runs/flow-run/")
        flow_run_id = paused_url.rsplit("/", 1)[1]
        # The printed line, as a new terminal in the clone runs it: the venv's own binary.
        assert approve_line == (
            f"NEURALOPS_DATA_DIR={shlex.quote(str(data))} .venv/bin/neuralops approve "
            f"{incident_id} --approver {approver} --token {token}"
        )
        api = httpx.Client(base_url=f"{ui}/api", timeout=10)

        def state() -> str:
            return api.get(f"/flow_runs/{flow_run_id}").json()["state"]["type"]

        def refusals() -> list[dict[str, Any]]:
            """The run's approval-refused artifacts, newest first."""
            found = api.post(
                "/artifacts/filter",
                json={
                    "artifacts": {
                        "flow_run_id": {"any_": [flow_run_id]},
                        "key": {"any_": ["approval-refused"]},
                    },
                    "sort": "CREATED_DESC",
                },
            )
            return found.json()

        assert state() == "PAUSED"
        lap("`neuralops run`: the remediation is paused")

        SHOTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": WIDE, "height": 1000})
            # Generous: the suite may run beside this test on 2 cores. They bound waits for
            # conditions (a page's data, a submit's round trip), never a fixed sleep.
            page.set_default_timeout(60_000)
            expect.set_options(timeout=30_000)

            def shot(name: str, height: int = 1000) -> None:
                """The page at this height (the UI scrolls inside itself: a taller window
                shows more of a long artifact)."""
                if height != 1000:
                    page.set_viewport_size({"width": WIDE, "height": height})
                page.screenshot(path=SHOTS / name)
                if height != 1000:
                    page.set_viewport_size({"width": WIDE, "height": 1000})

            def open_run(tab: str | None = None) -> None:
                page.goto(paused_url)
                expect(page.get_by_text("Suspended").first).to_be_visible(timeout=60_000)
                if tab:
                    page.get_by_text(tab, exact=True).click()

            def open_artifact(key: str) -> None:
                open_run("Artifacts")
                page.get_by_text(key, exact=True).first.click()
                page.wait_for_url(re.compile(r"/artifacts/artifact/"))

            # 1. The paused run, and what the operator decides from: its artifacts.
            open_run("Artifacts")
            for key in BEFORE_APPROVAL:
                expect(page.get_by_text(key, exact=True).first).to_be_visible()
            shot("02-artifacts-before-approval.png", 1300)
            page.get_by_text("Logs", exact=True).click()  # the page as it opens, drawn by now
            shot("01-paused-run.png")

            # The incident: the signal's hint, naming the part of the default detector that
            # fired ("OOM kills of namespace=payments, ...: level shifted by +11.1σ at 12:54
            # UTC", or "... is 8.8σ above its 3h baseline"), its series and the metric around it.
            open_artifact("remediation-incident")
            hint = page.locator("blockquote").first
            expect(hint).to_contain_text(
                re.compile(r"OOM kills of namespace=payments.*(level shifted by \+[\d.]+σ|σ above)")
            )
            expect(page.get_by_text("The metric around the incident", exact=True)).to_be_visible()
            expect(page.get_by_role("img", name="the metric around the incident")).to_be_visible()
            expect(page.get_by_text("Evidence: similar past runs")).to_be_visible()
            shot("02a-incident-evidence.png", 2200)

            # The dry-run: the policy verdict, rule by rule, and the diff against the
            # workload's current spec.
            open_artifact("remediation-dry-run")
            expect(
                page.get_by_text(re.compile(r"^Policy verdict: passed \(\d+ checks, 0 failed\)$"))
            ).to_be_visible()
            expect(page.get_by_text("delete-namespace", exact=True)).to_be_visible()
            change = page.locator("li", has_text="resources.limits.memory")
            expect(change).to_contain_text(re.compile(r"512Mi\s*→\s*2Gi"))
            diff = page.locator("pre", has_text="--- Deployment/payments/payments-api (now)")
            expect(diff).to_be_visible()
            expect(diff).to_contain_text(re.compile(r"-\s+memory: 512Mi\n\+\s+memory: 2Gi"))
            shot("02b-dry-run-verdict-and-diff.png", 1500)

            # Why a person must approve.
            open_artifact("remediation-approval")
            expect(page.get_by_text("Waiting for approval", exact=True)).to_be_visible()
            expect(page.get_by_text("playbook raise-memory-limit is manual").first).to_be_visible()
            shot("02c-why-approval.png")
            lap("the evidence in the artifacts")

            # 2. The Resume form shows the plan; a bad token is refused, visibly.
            open_run()
            page.get_by_role("button", name="Resume").click()
            dialog = page.get_by_role("dialog")

            def field(title: str) -> Locator:  # the form's fields by their titles
                label = page.locator(".schema-form-property__label", has_text=title)
                return dialog.locator(".schema-form-property").filter(has=label).last

            def decide(token_: str) -> None:
                decision = field("Decision").locator("button.p-select-button__control")
                decision.press("ArrowDown")  # opens the drop-down of the Literal's values
                page.get_by_role("option", name="approve").wait_for()
                decision.press("Enter")
                expect(decision).to_have_text("approve")
                field("Approver id").locator("textarea").fill(approver)
                field("Approval token").locator("textarea").fill(token_)

            # What approve runs, next to the Decision (the description above the form is
            # shrunk to a small scrolled box in a window this size).
            help_ = field("Decision").locator(".schema-form-property__markdown")
            expect(help_).to_contain_text(re.compile(r"memory.*512Mi\s*→\s*2Gi"))
            expect(help_).to_contain_text(re.compile(r"plan digest [0-9a-f]{12}…"))
            expect(dialog.get_by_text(re.compile(r"^Approve incident "))).to_be_visible()
            decide(tampered(token))
            field("Comment").locator("textarea").fill("tried with a token that does not verify")
            shot("03-resume-form.png", 1400)  # tall enough for the plan above the form too
            dialog.get_by_role("button", name="Submit").click()
            expect(dialog).to_be_hidden()
            # The run replays on the worker, checks the token, refuses and waits again.
            poll(refusals, 120, "the approval-refused artifact")
            poll(lambda: state() == "PAUSED", 120, "the run to wait again after the refusal")
            open_artifact("approval-refused")
            expect(page.get_by_text("Approval refused", exact=True)).to_be_visible()
            expect(page.get_by_text("given through the Resume form")).to_be_visible()
            expect(page.locator("blockquote")).to_contain_text("bad_signature")
            shot("04-approval-refused.png")
            # The run's log has it too, at WARNING (logs reach the API in batches).
            poll(
                lambda: any(
                    "refused" in w["message"]
                    for w in api.post(
                        "/logs/filter",
                        json={
                            "logs": {
                                "flow_run_id": {"any_": [flow_run_id]},
                                "level": {"ge_": 30},
                            }
                        },
                    ).json()
                ),
                60,
                "the refusal's WARNING line in the run's log",
            )
            # ... and the Resume form is there again, for the next attempt.
            open_run()
            page.get_by_role("button", name="Resume").click()
            expect(field("Approval token").locator("textarea")).to_be_editable()
            expect(field("Decision").locator("button.p-select-button__control")).to_be_enabled()
            dialog.get_by_role("button", name="Close", exact=True).last.click()
            expect(dialog).to_be_hidden()
            lap("refused in the Resume form, the notice, the form again")

            # 3. From a new terminal: the printed line with a bad token is refused in one
            # line; the printed line as printed approves.
            terminal = new_terminal(data, tmp_path / "home")
            bad = approve_line.replace(f"--token {token}", f"--token {tampered(token)}")
            refused = subprocess.run(
                ["bash", "-c", bad],
                env=terminal,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert refused.returncode == 2, refused.stdout + refused.stderr
            # One line says why, after the notes on the stack, the database and the dev key.
            *notes, why = refused.stderr.strip().splitlines()
            assert why.startswith("refused: approval token refused (bad_signature)"), why
            assert [n.split(":")[0] for n in notes] == [
                "PREFECT_API_URL is not set",
                "POSTGRES_DSN is not set",
                "DEV ONLY",
            ], notes
            assert "Traceback" not in refused.stderr and state() == "PAUSED"
            assert "`neuralops approve`" in poll(
                lambda: next(
                    (a["data"] for a in refusals() if "neuralops approve`" in a["data"]), None
                ),
                30,
                "the CLI's refusal on the run",
            )

            lap("refused from the new terminal")
            approved = subprocess.run(
                ["bash", "-c", approve_line],
                env=terminal,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert approved.returncode == 0, approved.stdout + approved.stderr
            assert f"using the running stack's Prefect API {ui}/api" in approved.stderr
            assert f"approved: resumed flow run {flow_run_id}" in approved.stdout
            final = poll(
                lambda: (s := state()) in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and s,
                600,
                "the approved run to finish",
            )
            assert final == "COMPLETED", output.text[-3000:]

            lap("approved from the new terminal, run completed")

            # 4. The succeeded run: its artifacts, and how it ended.
            page.goto(paused_url)
            expect(page.get_by_text("Completed").first).to_be_visible(timeout=60_000)
            page.get_by_text("Artifacts", exact=True).click()
            for key in ("remediation-result", "remediation-audit", "approval-refused"):
                expect(page.get_by_text(key, exact=True).first).to_be_visible()
            shot("05-completed-run.png", 1300)
            page.get_by_text("remediation-result", exact=True).first.click()
            page.wait_for_url(re.compile(r"/artifacts/artifact/"))
            expect(page.get_by_text(f"Incident {incident_id}: succeeded")).to_be_visible()
            expect(page.get_by_text(f"approver: {approver}", exact=True)).to_be_visible()
            shot("06-remediation-result.png")
            browser.close()
            lap("the succeeded run in the UI")

        # What the approval did, read from the database the loop used, from the new terminal.
        listed = subprocess.run(
            [str(NEURALOPS), "incidents", "list", "--json"],
            env=terminal,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        assert re.search(rf'"id": "{incident_id}"', listed.stdout), listed.stdout
        assert re.search(r'"state": ?"succeeded"', listed.stdout), listed.stdout
        assert re.search(rf'"approver": ?"{re.escape(approver)}"', listed.stdout)
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert "stopped:" in output.text
    assert "prefect-server" in output.text.rsplit("stopped:", 1)[1]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
