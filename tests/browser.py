"""Open a page in headless Chromium (the system browser: `apt-get install -y chromium`) and
return what it rendered: the DOM after loading, the console's messages, a screenshot."""

import os
import shutil
import subprocess

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    found = next((path for b in BROWSERS if (path := shutil.which(b))), None)
    if found is None:
        pytest.skip("no Chromium on this machine: `apt-get install -y chromium` (.ci/run installs it)")
    return found


def render(page: str, screenshot: str) -> tuple[str, list[str]]:
    """(the DOM as rendered, the console's error lines) of a local HTML file."""
    url = "file://" + os.path.abspath(page)
    common = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
              "--v=0", "--window-size=1300,1000"]
    dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    shot = subprocess.run(common + [f"--screenshot={screenshot}", url], capture_output=True, text=True,
                          timeout=120)
    console = [line for out in (dom.stderr, shot.stderr) for line in out.splitlines()
               if "CONSOLE" in line or "Failed to load resource" in line]
    return dom.stdout, console
