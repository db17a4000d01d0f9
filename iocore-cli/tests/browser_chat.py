"""Two browser members of a chat room, for tests/browser.rs.

Opens the chat page of `iocore serve --app chat --ws ADDR` twice in
headless Chromium (the system's, driven by Playwright), joins ROOM in
both, says one line from each, prints READY, then waits until both pages
show every line in WANT (the terminal member's too), and prints each
page's lines as JSON. With --screenshot PATH it saves the first page.
With --self-signed the pages take the server's self-signed certificate
(an https URL: the page then speaks wss).
"""

import argparse
import json
import sys

from playwright.sync_api import sync_playwright

p = argparse.ArgumentParser()
p.add_argument("--url", required=True)
p.add_argument("--room", default="lobby")
p.add_argument("--chromium", default="/usr/bin/chromium")
p.add_argument("--want", action="append", default=[])
p.add_argument("--screenshot")
p.add_argument("--timeout-ms", type=int, default=30000)
p.add_argument("--self-signed", action="store_true")
# Members already in the room (the terminal's): each page counts them.
p.add_argument("--others", type=int, default=1)
args = p.parse_args()


def lines(page):
    return page.eval_on_selector_all("#log li", "els => els.map(e => e.textContent)")


def wait_for_line(page, text):
    try:
        page.wait_for_function(
            "t => [...document.querySelectorAll('#log li')].some(e => e.textContent.endsWith(t))",
            arg=text,
            timeout=args.timeout_ms,
        )
    except Exception:
        print(f"no line ending {text!r} on the page; it shows: {lines(page)}", file=sys.stderr)
        raise


with sync_playwright() as pw:
    browser = pw.chromium.launch(
        executable_path=args.chromium,
        headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    )
    pages = []
    for name in ("ann", "ben"):
        page = browser.new_page(
            viewport={"width": 820, "height": 620}, ignore_https_errors=args.self_signed
        )
        page.set_default_timeout(args.timeout_ms)
        page.goto(args.url)
        page.wait_for_selector("#join:not([disabled])")
        page.fill("#room", args.room)
        page.click("#join")
        wait_for_line(page, f"joined {args.room} ({args.others + len(pages) + 1} here)")
        pages.append((name, page))
    for name, page in pages:
        page.fill("#text", f"hello from {name} in the browser")
        page.click("#say")
    print("READY", flush=True)
    want = [f"hello from {n} in the browser" for n, _ in pages] + args.want
    for _, page in pages:
        for text in want:
            wait_for_line(page, text)
    if args.screenshot:
        pages[0][1].screenshot(path=args.screenshot)
    print(json.dumps({name: lines(page) for name, page in pages}), flush=True)
    browser.close()
sys.exit(0)
