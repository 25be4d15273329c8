"""The page in headless Debian Chromium (Playwright from PyPI, /usr/bin/chromium): the user journeys J1-J7.

Screenshots go to tests/artifacts/ (look at them: a workshop audience must understand the page).
Chromium's fake media device plays a real clip into the microphone.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from engine.speech.audio import load_audio
from engine.speech.samples import sample_clips

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
JOB_TIMEOUT_MS = 300_000  # one quantization on 2 busy cores


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
    monkeypatch_module.setenv("ASRQ_DATA_DIR", str(tmp_path_factory.mktemp("asrq-data")))
    from ui.app import build_app

    demo = build_app()
    _, url, _ = demo.launch(prevent_thread_lock=True, ssr_mode=False, quiet=True)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def fake_mic_wav(tmp_path_factory) -> Path:
    clip = next(c for c in sample_clips() if c.name == "demo-05")
    path = tmp_path_factory.mktemp("mic") / "mic.wav"
    sf.write(path, load_audio(clip.path), 16000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(fake_mic_wav):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is missing: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={fake_mic_wav}", "--no-sandbox"])
        yield browser
        browser.close()


def new_page(browser, url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, permissions=["microphone"])
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.locator("#quantize").wait_for()
    return page


def choose(page, elem_id: str, value: str) -> None:
    """Pick a dropdown option by typing its visible text."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(value)
    page.get_by_role("option", name=re.compile(re.escape(value))).first.click()


def wait_for_run(page, previous: str = "") -> str:
    run_id = page.locator("#run-id textarea, #run-id input").first
    page.wait_for_function(
        "([sel, prev]) => { const e = document.querySelector(sel); return e && e.value && e.value !== prev; }",
        arg=["#run-id textarea, #run-id input", previous], timeout=JOB_TIMEOUT_MS)
    return run_id.input_value()


def record(page, audio, milliseconds: int) -> None:
    """Record from Chromium's fake microphone (it plays the fake capture file)."""
    audio.locator("button.record-button").click()
    page.wait_for_timeout(milliseconds)
    audio.locator("button.stop-button:visible").first.click()
    page.wait_for_timeout(1500)


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_j1_default_fade_quantize_progress_transcripts_plots(browser, app_url):
    page = new_page(browser, app_url)
    page.locator("#quantize").click()
    # A visible status tracker on the outputs: gradio's progress (the worker's messages, a bar, a timer).
    page.locator("[data-testid='status-tracker']:not(.hide)").first.wait_for(timeout=60_000)
    page.wait_for_timeout(3000)
    shot(page, "j1-progress")
    wait_for_run(page)
    status = page.locator("#status").inner_text()
    assert "fade" in status.lower()
    # The result line names its evaluation set and says how sure the difference to full precision is.
    assert "WER on 10 synthetic demo clips, 2 voices" in status and "95% interval" in status
    assert "on these 10 clips" in status
    # The latency is measured on a real runtime, named on the gauge; its file is offered for download.
    assert "whisper.cpp q4_1" in page.locator("#latency-plot").inner_text()
    assert "whisper.cpp q4_1" in page.locator("#download-whisper-cpp").inner_text()
    choose(page, "sample", "demo-05")
    page.wait_for_timeout(1500)
    page.locator("#transcribe").click()
    page.wait_for_function("() => document.querySelector('#details') && "
                           "document.querySelector('#details').innerText.includes('WER')", timeout=120_000)
    assert "fox" in page.locator("#fp-text textarea").input_value().lower()
    assert page.locator("#q-text").inner_text().strip()
    assert page.locator("[data-testid='plotly'], .js-plotly-plot").count() >= 4  # error, alpha, size, latency
    shot(page, "j1-result")
    page.context.close()


def test_j2_edit_two_layers_then_both_runs_in_history_and_pareto(browser, app_url):
    page = new_page(browser, app_url)
    page.locator("#quantize").click()  # the default FADE 4-bit (saved by J1: answered from its artifact)
    first = wait_for_run(page)
    page.get_by_text("Per-layer settings").click()
    table = page.locator("#layers")
    for row, col, value in ((0, 4, "8"), (1, 6, "0.3")):  # bits of the first layer, alpha of the second
        cell = table.locator(f"[data-testid='cell-{row}-{col}']")
        cell.dblclick()
        editor = cell.locator("input, textarea").first
        editor.fill(value)
        editor.press("Enter")
        page.wait_for_timeout(300)
    page.wait_for_timeout(500)
    page.locator("#quantize").click()
    second = wait_for_run(page, first)
    assert second != first
    page.wait_for_function("() => document.querySelectorAll('#history .virtual-row').length >= 2", timeout=60_000)
    history = page.locator("#history").inner_text()
    assert first in history and second in history and "edited rows" in history
    assert page.locator("#pareto-plot .js-plotly-plot, #pareto-plot [data-testid='plotly']").count() >= 1
    shot(page, "j2-history-pareto")
    page.context.close()


def test_j3_microphone_recording_is_transcribed(browser, app_url):
    page = new_page(browser, app_url)
    audio = page.locator("#audio")
    audio.get_by_label("Record audio").click()  # upload is this component's first source
    record(page, audio, 4000)
    page.locator("#transcribe").click()
    page.wait_for_function("() => document.querySelector('#fp-text textarea').value.length > 3", timeout=120_000)
    shot(page, "j3-microphone")
    assert "fox" in page.locator("#fp-text textarea").input_value().lower()  # the fake microphone plays demo-05
    page.context.close()


def test_j4_cancel_a_running_job_then_a_new_job_completes(browser, app_url):
    page = new_page(browser, app_url)
    choose(page, "method", "gptq")
    choose(page, "bits", "3")
    page.locator("#quantize").click()
    page.wait_for_timeout(4000)
    page.locator("#cancel").click()
    page.get_by_text(re.compile("cancel", re.I)).first.wait_for(timeout=60_000)
    shot(page, "j4-cancelled")
    choose(page, "method", "rtn")
    choose(page, "bits", "5")
    page.locator("#quantize").click()
    assert wait_for_run(page)
    page.context.close()


def test_j5_two_browsers_quantize_at_once_and_get_their_own_results(browser, app_url):
    a, b = new_page(browser, app_url), new_page(browser, app_url)
    for page, bits in ((a, "6"), (b, "2")):
        choose(page, "method", "rtn")
        choose(page, "bits", bits)
    a.locator("#quantize").click()
    b.locator("#quantize").click()
    run_a, run_b = wait_for_run(a), wait_for_run(b)
    assert run_a != run_b
    assert "6-bit" in a.locator("#status").inner_text() and "2-bit" in b.locator("#status").inner_text()
    shot(b, "j5-second-user")
    a.context.close()
    b.context.close()


def test_j6_non_audio_upload_gets_a_message_and_the_server_keeps_serving(browser, app_url, tmp_path):
    page = new_page(browser, app_url)
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    page.locator("#audio input[type=file]").set_input_files(str(bad))
    page.wait_for_timeout(1500)
    page.locator("#transcribe").click()
    page.get_by_text(re.compile("not a readable audio file|choose a sample", re.I)).first.wait_for(timeout=60_000)
    shot(page, "j6-bad-upload")
    page.reload()
    page.locator("#quantize").wait_for()
    choose(page, "sample", "demo-01")
    page.wait_for_timeout(1500)
    page.locator("#transcribe").click()
    page.wait_for_function("() => document.querySelector('#fp-text textarea').value.length > 3", timeout=120_000)
    page.context.close()


def test_j7_personalise_with_recorded_prompts_shows_before_and_after(browser, app_url):
    page = new_page(browser, app_url)
    for i in range(3):
        prompt = page.locator(f"#prompt-{i}")
        prompt.scroll_into_view_if_needed()
        record(page, prompt, 3000)
    page.locator("#personalize").click()
    page.get_by_text("NF4 + your adapter").wait_for(timeout=JOB_TIMEOUT_MS)
    shot(page, "j7-personalised")
    assert "held-out" in page.locator("#personal-result").inner_text()
    page.context.close()
