"""The main job end to end: `neuralops run` (what `make run` calls) brings up the whole loop
and ends with a remediation paused for approval; an operator approves it in the real Prefect
UI, driven by Playwright in Debian's chromium (headless, kept off the network); Ctrl-C stops
everything the command started. Screenshots go to reports/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port, skip_or_fail

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SHOTS = Path(__file__).resolve().parents[1] / "reports" / "screenshots"
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
BEFORE_APPROVAL = ("remediation-incident", "remediation-recommendation", "remediation-dry-run")
READY_S = 1200  # a fresh server, deploy, workers, seeding and the triggered run on 2 cores


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
            if found := re.search(pattern, self.text):
                return found.group(1)
            if process.poll() is not None:
                time.sleep(0.5)  # let the reader drain the last lines
                pytest.fail(f"`neuralops run` exited {process.returncode}:\n{self.text[-4000:]}")
            time.sleep(1)
        pytest.fail(f"no {pattern!r} within {timeout_s:.0f} s:\n{self.text[-4000:]}")


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        skip_or_fail("Debian's chromium is not installed (make system-deps installs it)")
    return path


def test_run_pauses_a_remediation_that_an_operator_approves_in_the_ui(
    tmp_path: Path, chromium: str
) -> None:
    from playwright.sync_api import Locator, expect, sync_playwright

    port = free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NEURALOPS_"))}
    env |= {"NEURALOPS_DATA_DIR": str(data), "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    env.pop("POSTGRES_DSN", None)
    env.pop("PROM_URL", None)
    command = [str(Path(sys.executable).with_name("neuralops")), "run", "--port", str(port)]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    output = Output(process)
    try:
        token = output.wait_for(r"APPROVAL_TOKEN=(\S+)", process, READY_S)
        paused_url = output.wait_for(r"Paused run\s+(http://\S+)", process, 10)
        approver = output.wait_for(r"Approver id (\S+), and this", process, 10)
        ui = f"http://127.0.0.1:{port}"
        assert paused_url.startswith(f"{ui}/runs/flow-run/")
        flow_run_id = paused_url.rsplit("/", 1)[1]
        api = httpx.Client(base_url=f"{ui}/api", timeout=10)
        assert api.get(f"/flow_runs/{flow_run_id}").json()["state"]["type"] == "PAUSED"

        SHOTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(paused_url)
            # A run waiting from a deployment is suspended (no worker held): state type PAUSED.
            expect(page.get_by_text("Suspended").first).to_be_visible(timeout=60_000)
            page.screenshot(path=SHOTS / "01-paused-run.png", full_page=True)

            page.get_by_text("Artifacts", exact=True).click()
            for key in BEFORE_APPROVAL:
                expect(page.get_by_text(key).first).to_be_visible(timeout=30_000)
            page.screenshot(path=SHOTS / "02-artifacts-before-approval.png", full_page=True)
            # What the operator reads before deciding: the dry-run's verdict and diff, the
            # incident with its evidence.
            page.get_by_text("remediation-dry-run").first.click()
            expect(page.get_by_text("Dry-run passed").first).to_be_visible(timeout=30_000)
            expect(page.get_by_text("memory: 2Gi").first).to_be_visible()
            page.screenshot(path=SHOTS / "02a-dry-run-diff.png", full_page=True)
            page.goto(paused_url)
            page.get_by_text("Artifacts", exact=True).click()
            page.get_by_text("remediation-incident").first.click()
            expect(page.get_by_text("Evidence: similar past runs").first).to_be_visible()
            page.screenshot(path=SHOTS / "02b-incident-and-evidence.png", full_page=True)
            page.goto(paused_url)

            page.get_by_role("button", name="Resume").click()
            dialog = page.get_by_role("dialog")

            def field(title: str) -> Locator:  # the form's fields by their titles
                label = page.locator(".schema-form-property__label", has_text=title)
                return dialog.locator(".schema-form-property").filter(has=label).last

            decision = field("Decision").locator("button.p-select-button__control")
            decision.press("ArrowDown")  # opens the drop-down of the Literal's values
            page.get_by_role("option", name="approve").wait_for()
            decision.press("Enter")
            expect(decision).to_have_text("approve")
            field("Approver id").locator("textarea").fill(approver)
            field("Approval token").locator("textarea").fill(token)
            field("Comment").locator("textarea").fill("approved in the browser test")
            page.screenshot(path=SHOTS / "03-resume-form.png", full_page=True)
            dialog.get_by_role("button", name="Submit").click()

            deadline = time.monotonic() + 600
            state = "PAUSED"
            while time.monotonic() < deadline:
                state = api.get(f"/flow_runs/{flow_run_id}").json()["state"]["type"]
                if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    break
                time.sleep(2)
            assert state == "COMPLETED", output.text[-3000:]
            page.reload()
            expect(page.get_by_text("Completed").first).to_be_visible(timeout=60_000)
            page.screenshot(path=SHOTS / "04-completed-run.png", full_page=True)
            page.get_by_text("Artifacts", exact=True).click()
            for key in ("remediation-result", "remediation-audit"):
                expect(page.get_by_text(key).first).to_be_visible(timeout=30_000)
            page.screenshot(path=SHOTS / "05-artifacts-after-approval.png", full_page=True)
            browser.close()

        # What the approval did, read from the database the loop used.
        result = subprocess.run(
            [command[0], "incidents", "list", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert '"state": "succeeded"' in result.stdout or '"state":"succeeded"' in result.stdout
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
