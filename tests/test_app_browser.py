"""The page in a real headless Chromium (Debian's `chromium`, driven by Playwright): what a user clicks and sees."""

import os
import shutil

import pytest

from app_testing import PROMPT, Gate, app_module, models_dir, one_torch_thread, serve  # noqa: F401

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SLOTS = ["1", "2", "4", "8", "16", "teacher"]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        message = "Debian's chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def url(app_module, models_dir):
    app = app_module.SoundCTMApp(*app_module.resolve_models(str(models_dir)))
    with serve(app.build(), app_module) as url:
        yield url


def open_page(browser, url, **context):
    page = browser.new_page(**context)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.get_by_role("button", name="Generate", exact=True).wait_for()
    return page


def wait_for_wavs(page, container: str, count: int):
    """Waits until `count` audio players in `container` have a WAV to download (a filled Gradio 6 audio output)."""
    page.wait_for_function(
        "([sel, n]) => document.querySelectorAll(sel + ' a[download][href$=\".wav\"]').length >= n",
        arg=[container, count],
        timeout=TIMEOUT_MS,
    )


def spectrogram_sources(page, column_id: str) -> list[str]:
    return page.eval_on_selector_all(f"#{column_id} img", "imgs => imgs.map(i => i.getAttribute('src') || '')")


def test_generate_fills_every_column_with_audio_and_a_spectrogram(browser, url):
    page = open_page(browser, url, viewport={"width": 1400, "height": 1000})
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_role("button", name="Generate", exact=True).click()
    for slot in SLOTS:
        wait_for_wavs(page, f"#compare-{slot}", 1)
        assert any(".png" in src for src in spectrogram_sources(page, f"compare-{slot}")), slot
        page.locator(f"#compare-{slot}").get_by_text(" s", exact=False).last.wait_for()
    assert "seed: 0" in page.locator("#compare-settings textarea").input_value()
    assert page.locator(".toast-body").count() == 0
    page.close()


def test_unticked_step_counts_hide_their_columns(browser, url):
    page = open_page(browser, url, viewport={"width": 1400, "height": 1000})
    assert page.locator("#compare-8").is_visible()
    page.get_by_label("8 steps", exact=True).uncheck()
    page.locator("#compare-8").wait_for(state="hidden")
    assert page.locator("#compare-16").is_visible()
    page.close()


def test_drafts_then_refine_the_picked_one(browser, url):
    page = open_page(browser, url, viewport={"width": 1400, "height": 1000})
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_role("tab", name="Drafts → refine").click()
    page.get_by_role("button", name="Make drafts", exact=True).click()
    for i in range(4):
        wait_for_wavs(page, f"#draft-{i}", 1)
    picked = page.locator("#draft-2 input").input_value()
    assert picked and picked != "0"
    page.locator("#draft-2").get_by_role("button", name="Refine this draft").click()
    wait_for_wavs(page, "#refined", 1)
    assert page.locator("#seed input").input_value() == picked  # the picked seed stays in view, editable
    settings = page.locator("#refine-settings textarea")
    page.wait_for_function("(el) => el.value.includes('--seed')", arg=settings.element_handle())
    assert f"seed: {picked}" in settings.input_value() and "--steps 16" in settings.input_value()
    assert page.locator(".toast-body").count() == 0
    page.close()


def test_the_1_step_column_plays_while_the_teacher_still_runs(browser, app_module, models_dir):
    app = app_module.SoundCTMApp(*app_module.resolve_models(str(models_dir)))
    demo = app.build()
    gate = Gate(app.teacher.get().transformer)  # holds the teacher's first network evaluation
    try:
        with serve(demo, app_module) as url:
            page = open_page(browser, url, viewport={"width": 1400, "height": 1000})
            page.get_by_label("Prompt", exact=True).fill(PROMPT)
            page.get_by_role("button", name="Generate", exact=True).click()
            for slot in SLOTS[:-1]:
                wait_for_wavs(page, f"#compare-{slot}", 1)
            gate.wait_entered(1)
            assert page.locator("#compare-teacher a[download]").count() == 0
            gate.open()
            wait_for_wavs(page, "#compare-teacher", 1)
            page.wait_for_function("(el) => el.value.includes('teacher: ')",
                                   arg=page.locator("#compare-settings textarea").element_handle())
            page.close()
    finally:
        gate.open()


def test_an_empty_prompt_shows_a_message_and_the_page_keeps_working(browser, url):
    page = open_page(browser, url, viewport={"width": 1400, "height": 1000})
    page.get_by_role("button", name="Generate", exact=True).click()
    toast = page.locator(".toast-body").first
    toast.wait_for()
    assert "Type a prompt first" in toast.inner_text()
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_for_wavs(page, "#compare-1", 1)
    page.close()


def test_the_page_fits_a_phone_screen(browser, url):
    width = 390
    page = open_page(browser, url, viewport={"width": width, "height": 844}, is_mobile=True, has_touch=True,
                     device_scale_factor=2)
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_for_wavs(page, "#compare-teacher", 1)
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing scrolls sideways
    for slot in SLOTS:  # the columns stack instead of squeezing: each is nearly the screen's width
        box = page.locator(f"#compare-{slot}").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width and box["width"] > width / 2, slot
    page.close()
