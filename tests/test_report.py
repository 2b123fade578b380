import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivegpt.report import build_report, curves_png, stage_dirs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _fake_run(root: Path) -> Path:
    fleet = root / "01_fleet"
    fleet.mkdir(parents=True)
    (fleet / "metrics.json").write_text(json.dumps({"km": 12.5, "by_cause": {"STEER": 3}}))
    img = np.zeros((32, 64, 3), np.uint8)
    img[:, :32] = (0, 0, 255)
    cv2.imwrite(str(fleet / "contact_sheet.png"), img)
    tok = root / "03_train_tokenizer"
    (tok / "logs").mkdir(parents=True)
    (tok / "metrics.json").write_text(json.dumps({"psnr": 27.0}))
    (tok / "logs" / "metrics.csv").write_text("step,epoch,train/loss\n0,0,1.0\n10,0,0.5\n20,0,0.25\n")
    ro = root / "10_rollout"
    ro.mkdir()
    (ro / "metrics.json").write_text(json.dumps({"uncertainty": 0.1}))
    w = cv2.VideoWriter(str(ro / "rollout.webm"), cv2.VideoWriter_fourcc(*"VP80"), 5, (64, 32))
    for i in range(10):
        f = np.full((32, 64, 3), i * 20, np.uint8)
        w.write(f)
    w.release()
    (ro / "scoreboard.md").write_text("| policy | dis/100km |\n|---|---|\n| rl | 1.0 |\n")
    ck = ro / "checkpoints"
    ck.mkdir()
    cv2.imwrite(str(ck / "ignored.png"), img)
    return root


def test_stage_order_and_sections(tmp_path):
    run = _fake_run(tmp_path)
    names = [d.name for _, d in stage_dirs(run)]
    assert names == ["01_fleet", "03_train_tokenizer", "10_rollout"]
    html = build_report(run).read_text()
    assert html.count("<img") == 2  # contact sheet + curves; checkpoints/ skipped
    assert html.count("<video") == 1 and "dis/100km" in html and "12.5" in html


def test_curves_png_plots_logged_columns(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("step,epoch,loss,val\n0,0,1.0,\n1,0,0.5,2\n2,0,0.2,1\n")
    png = curves_png(p)
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[1] > img.shape[0] > 50


def test_report_errors_on_empty_dir(tmp_path):
    with pytest.raises(ValueError, match="no stage"):
        build_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        build_report(tmp_path / "nope")


def test_summary_table_headlines_and_gif_fallback_hidden(tmp_path):
    run = _fake_run(tmp_path)
    ro = run / "10_rollout"
    (ro / "rollout.gif").write_bytes((run / "01_fleet" / "contact_sheet.png").read_bytes())
    (run / "metrics.json").write_text(json.dumps({"stages": {
        "fleet": {"seconds": 3.0, "status": "ran", "dir": "01_fleet", "headline": "km=12.5"}}}))
    html = build_report(run).read_text()
    assert "<h2>Summary</h2>" in html and "km=12.5" in html and "href='#01_fleet'" in html
    assert "rollout.gif" not in html and "rollout.webm" in html


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (.ci/run installs it)")
def test_report_loads_in_headless_chromium(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    report = build_report(_fake_run(tmp_path))
    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri())
        page.wait_for_function(
            "[...document.images].every(i => i.complete) && "
            "[...document.querySelectorAll('video')].every(v => v.readyState >= 2 || v.error)",
            timeout=15000,
        )
        images = page.evaluate("[...document.images].map(i => i.naturalWidth)")
        videos = page.evaluate(
            "[...document.querySelectorAll('video')].map(v => [v.readyState, v.error && v.error.code, v.videoWidth])")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert len(images) == 2 and all(w > 0 for w in images)
    assert videos == [[videos[0][0], None, 64]] and videos[0][0] >= 2
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
