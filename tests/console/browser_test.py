"""The support console as a person uses it, in headless Chromium: log in with a token, create a key and
read its plaintext once, create another from a fresh form, find them in the list (the search box draws
the answer for its whole text, however late an earlier answer comes), make checks through the C ABI and
see them in the chart, rotate and revoke a key and read its page, see the audit entries, add and edit a
plan; read-only mode and requests without the session or the CSRF token are refused. No page shows a
"null", "undefined" or "[object ...]". Screenshots of the main pages go to target/console-screenshots/."""

import ctypes
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("MS_AUTH_BIN", os.path.join(REPO, "target/release/ms-auth"))
LIB = os.path.join(REPO, "target/release/libms_auth.so")
SHOTS = os.path.join(REPO, "target/console-screenshots")
TOKEN = "alice-browser-token-0123456789"


class Console:
    """`ms-auth console` on 127.0.0.1 with an OS-chosen port."""

    def __init__(self, db, tokens, *extra):
        self.proc = subprocess.Popen(
            [BIN, "--db", db, "console", "--listen", "127.0.0.1:0", "--token-file", tokens, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        if line.startswith("ms-auth: created a new store at "):  # the first console, on a fresh store
            line = self.proc.stdout.readline()
        assert "listening on http://" in line, line
        self.url = line.split("listening on ")[1].strip().rstrip("/")

    def stop(self):
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        return out


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    # The login form has a password field: Chrome's password manager would reach for the desktop keyring
    # over D-Bus on submit, which can stall a headless browser; keep it out of the way.
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
              "--disable-gpu", "--no-first-run", "--password-store=basic", "--use-mock-keychain",
              "--disable-features=PasswordLeakDetection,PasswordManagerOnboarding"]:
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {"credentials_enable_service": False,
                                           "profile.password_manager_enabled": False,
                                           "profile.password_manager_leak_detection": False})
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def wait(d, cond, timeout=20):
    # Pages redraw themselves after each change: an element found a moment ago may have been replaced.
    return WebDriverWait(d, timeout, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)).until(cond)


def css(d, selector):
    return wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, selector)))


def login(d, url, token=TOKEN):
    d.get(url + "/")
    css(d, "#token").send_keys(token)
    d.find_element(By.ID, "login").click()
    wait(d, lambda d: "console:" in d.find_element(By.ID, "who").text)


def confirm(d):
    wait(d, EC.element_to_be_clickable((By.ID, "confirm-yes"))).click()


def shot(d, name):
    time.sleep(0.3)  # let the page settle
    assert_reads_clean(d)
    d.save_screenshot(os.path.join(SHOTS, name + ".png"))


def assert_reads_clean(d):
    """No JavaScript placeholder leaks into the page: a missing value reads as a word or "-", and a list of
    elements is drawn as elements."""
    text = d.find_element(By.TAG_NAME, "body").text
    leaks = re.findall(r"\bnull\b|\bundefined\b|\bNaN\b|\[object \w+\]", text)
    assert not leaks, f"{leaks} on the page:\n{text}"


def fetch(d, method, path, headers):
    """Status of a fetch made by the page itself (its cookies, its origin)."""
    return d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[1], {method: arguments[0], headers: arguments[2], body: arguments[0] === 'GET' ? undefined : '{}'})"
        ".then(r => done(r.status), e => done(String(e)));", method, path, headers)


def c_abi_checks(db, key, n):
    """Checks through the C ABI, as a server would make them; returns the decisions."""
    lib = ctypes.CDLL(LIB)
    lib.ms_auth_check.argtypes = [ctypes.c_char_p, ctypes.c_int64]
    assert lib.ms_open(db.encode()) == 0
    now = int(time.time() * 1000)
    out = [lib.ms_auth_check(key.encode(), now) for _ in range(n)]
    lib.ms_close()
    return out


def scenario(tmp):
    db = os.path.join(tmp, "store.db")
    tokens = os.path.join(tmp, "tokens")
    with open(tokens, "w") as f:
        f.write("alice:" + TOKEN + "\n")
    console = Console(db, tokens)
    d = browser()
    results = []

    def step(name, fn):
        try:
            fn()
            results.append((name, None))
            print("ok  ", name, flush=True)
        except Exception:  # noqa: BLE001 - every failure is reported, then the run fails
            results.append((name, traceback.format_exc()))
            print("FAIL", name, flush=True)
            print(traceback.format_exc(), flush=True)

    state = {}
    try:
        def logs_in():
            d.get(console.url + "/")
            css(d, "#token")
            assert d.current_url.endswith("/login"), d.current_url
            shot(d, "01-login")
            login(d, console.url)
            cookies = {c["name"]: c for c in d.get_cookies()}
            assert cookies["ms_console"]["httpOnly"] and cookies["ms_console"]["sameSite"] == "Strict"
            assert d.execute_script("return document.cookie") == "", "the session cookie is not readable by script"

        def creates_a_key_shown_once():
            d.get(console.url + "/#/keys")
            css(d, "#new-key").click()
            form = css(d, "#create-form")
            form.find_element(By.NAME, "name").send_keys("acme-support")
            form.find_element(By.NAME, "rate_limit").send_keys("5")
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            confirm(d)
            plaintext = css(d, "#plaintext").text
            assert plaintext.startswith("ms_live_"), plaintext
            shot(d, "02-key-created")
            row = css(d, "#keys-table tbody tr")
            assert "acme-support" in row.text, row.text
            state["key"], state["id"] = plaintext, row.get_attribute("data-id")
            # Shown once: another visit of the list does not show it, nor does any page.
            d.get(console.url + "/#/overview")
            d.get(console.url + "/#/keys")
            css(d, "#keys-table tbody tr")
            assert state["key"] not in d.page_source
            assert not d.find_elements(By.ID, "plaintext")
            shot(d, "03-keys")

        def second_key_starts_from_defaults():
            d.get(console.url + "/#/keys")
            css(d, "#keys-table tbody tr")
            css(d, "#new-key").click()
            form = css(d, "#create-form")
            form.find_element(By.NAME, "name").send_keys("first-draft")
            form.find_element(By.NAME, "quota_limit").send_keys("100")
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            confirm(d)
            css(d, "#plaintext")
            wait(d, lambda d: "first-draft" in d.find_element(By.ID, "keys-table").text)
            # The same form, opened again after a key was created, holds none of that key's values.
            css(d, "#new-key").click()
            form = css(d, "#create-form")
            values = {f.get_attribute("name"): f.get_attribute("value")
                      for f in form.find_elements(By.CSS_SELECTOR, "input, select")}
            assert values == {"name": "", "plan": "", "env": "live", "expires_days": "", "quota_limit": "",
                              "quota_period": "daily", "rate_limit": "", "rate_window": "60000", "burst": ""}, values
            form.find_element(By.NAME, "name").send_keys("beta-team")
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            confirm(d)
            wait(d, lambda d: "beta-team" in d.find_element(By.ID, "keys-table").text)
            rows = {r.find_elements(By.TAG_NAME, "td")[1].text: r.text
                    for r in d.find_elements(By.CSS_SELECTOR, "#keys-table tbody tr")}
            assert set(rows) == {"acme-support", "first-draft", "beta-team"}, rows
            assert "100 daily" not in rows["beta-team"] and "0 / 100 daily" in rows["first-draft"], rows
            shot(d, "02b-second-key")

        def searches_and_filters():
            css(d, "#search").send_keys("nothing-matches")
            wait(d, lambda d: "0 keys" in d.find_element(By.CSS_SELECTOR, "#key-list .count").text)
            d.find_element(By.ID, "search").clear()
            d.find_element(By.ID, "search").send_keys("acme")
            wait(d, lambda d: "1 keys" in d.find_element(By.CSS_SELECTOR, "#key-list .count").text)

        def search_shows_the_latest_answer():
            d.get(console.url + "/#/overview")  # the list drawn anew, its search box empty
            css(d, "#overview-chart")
            d.get(console.url + "/#/keys")
            css(d, "#keys-table tbody tr")
            assert d.find_element(By.ID, "search").get_attribute("value") == ""

            def count_for(q):
                return d.execute_async_script(
                    "const done = arguments[arguments.length - 1];"
                    "fetch('/api/v1/keys?q=' + encodeURIComponent(arguments[0])).then(r => r.json())"
                    ".then(j => done(j.keys.length), e => done(String(e)));", q)
            full, start = "acme-support", "a"
            assert count_for(full) == 1 and count_for(start) >= 2, (count_for(full), count_for(start))
            # The page's requests for the list are recorded; the one for "a" is held until released, so
            # its answer comes after the one for the whole text, as a slow answer over many keys would.
            d.execute_script("""
                const held = arguments[0], real = window.realFetch = window.fetch;
                window.keyQueries = []; window.keyAnswers = 0;
                window.fetch = async (url, opts) => {
                  const u = new URL(url, location.href);
                  if (u.pathname !== '/api/v1/keys') return real(url, opts);
                  const q = u.searchParams.get('q') || '';
                  window.keyQueries.push(q);
                  try {
                    if (q === held) await new Promise((release) => { window.releaseHeld = release; });
                    return await real(url, opts);
                  } finally { window.keyAnswers++; }
                };""", start)
            count_text = lambda d: d.find_element(By.CSS_SELECTOR, "#key-list .count").text
            box = d.find_element(By.ID, "search")
            box.send_keys(start)
            wait(d, lambda d: d.execute_script("return window.keyQueries.includes(arguments[0])", start))
            box.send_keys(full[len(start):])
            wait(d, lambda d: count_text(d) == "1 keys")
            d.execute_script("window.releaseHeld()")
            wait(d, lambda d: d.execute_script("return window.keyAnswers === window.keyQueries.length"))
            time.sleep(0.5)  # an answer that was let through is drawn right after it arrives
            assert box.get_attribute("value") == full
            assert count_text(d) == "1 keys", count_text(d)
            queries = d.execute_script("return window.keyQueries")
            assert queries[-1] == full, queries
            # Typing a word at once sends one request, not one a keystroke.
            box.clear()
            box.send_keys("beta-team")
            wait(d, lambda d: "beta-team" in d.find_element(By.ID, "keys-table").text and count_text(d) == "1 keys")
            time.sleep(0.5)
            queries = d.execute_script("return window.keyQueries")
            typed = queries[queries.index(full) + 1:]
            assert len(typed) <= 2 and typed[-1] == "beta-team", queries
            d.execute_script("window.fetch = window.realFetch")

        def checks_show_in_the_chart():
            decisions = c_abi_checks(db, state["key"], 8)
            assert decisions.count(0) == 5 and decisions.count(6) == 3, decisions  # 5/min: 5 ok, 3 rate limited
            d.get(console.url + "/#/keys/" + state["id"])
            bar = css(d, "#usage-chart rect.bar-admitted")
            assert "5 admitted" in bar.find_element(By.TAG_NAME, "title").get_attribute("textContent")
            limited = d.find_element(By.CSS_SELECTOR, "#usage-chart rect.bar-rate_limit_exceeded")
            assert "3 rate limited" in limited.find_element(By.TAG_NAME, "title").get_attribute("textContent")
            assert int(bar.get_attribute("height").split(".")[0]) > 0
            assert len(d.find_elements(By.CSS_SELECTOR, "#usage-chart g.day")) == 30
            d.find_element(By.CSS_SELECTOR, "#usage button[data-days='7']").click()
            wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#usage-chart g.day")) == 7)
            wait(d, lambda d: d.find_element(By.ID, "live-total").text == "5")
            shot(d, "04-key-page")

        def rotates_and_revokes():
            d.get(console.url + "/#/keys/" + state["id"])
            grace = css(d, "#grace-hours")
            grace.clear()
            grace.send_keys("1")
            d.find_element(By.ID, "rotate").click()
            confirm(d)
            new_key = css(d, "#action-result #plaintext").text
            assert new_key.startswith("ms_live_") and new_key != state["key"]
            old_page = d.find_element(By.ID, "record")
            d.find_element(By.CSS_SELECTOR, "#action-result a").click()
            wait(d, EC.staleness_of(old_page))
            css(d, "#revoke-reason").send_keys("customer asked")
            d.find_element(By.ID, "revoke").click()
            confirm(d)
            wait(d, lambda d: "revoked" in d.find_element(By.CSS_SELECTOR, "h2 .badge").text)
            assert new_key not in d.page_source
            assert not d.find_elements(By.ID, "revoke"), "a revoked key offers no actions"

        def revoked_key_page_reads_clean():
            # The page the last step left: the revoked replacement key.
            css(d, "#record")
            assert_reads_clean(d)
            record = {r.find_element(By.TAG_NAME, "th").text: r.find_element(By.TAG_NAME, "td").text
                      for r in d.find_elements(By.CSS_SELECTOR, "#record tbody tr")}
            assert "(customer asked)" in record["revoked"], record
            assert record["name"] == "acme-support" and record["plan"] == "-", record
            assert all(v.strip() for v in record.values()), record
            d.execute_script("document.getElementById('record').scrollIntoView()")
            shot(d, "04b-revoked-key-record")
            # The rotated key, in its grace period, and a key never used.
            for key_id in [state["id"], d.execute_script(
                    "return fetch('/api/v1/keys?q=beta-team').then(r => r.json()).then(j => j.keys[0].id)")]:
                d.get(console.url + "/#/keys/" + key_id)
                css(d, "#usage-chart")
                assert_reads_clean(d)

        def audit_names_the_console_user():
            d.get(console.url + "/#/audit")
            table = css(d, "#audit-table")
            wait(d, lambda d: "key.revoke" in d.find_element(By.ID, "audit-table").text)
            text = table.text
            for action in ["key.create", "key.rotate", "key.revoke"]:
                assert action in text, text
            assert "console:alice" in text
            css(d, "#audit-action").send_keys("key.rotate\n")
            wait(d, lambda d: "1 changes" in d.find_element(By.CSS_SELECTOR, "#audit-list .count").text)
            assert "action=key.rotate" in d.find_element(By.ID, "audit-csv").get_attribute("href")
            shot(d, "05-audit")

        def overview_and_plans_render():
            d.get(console.url + "/#/overview")
            css(d, "#overview-chart rect.bar-admitted")
            assert d.find_element(By.CSS_SELECTOR, "[data-state=revoked]").text == "1"
            shot(d, "06-overview")
            d.get(console.url + "/#/plans")
            css(d, "#plans-table")
            form = d.find_elements(By.CSS_SELECTOR, "form.plan-form")[-1]
            form.find_element(By.NAME, "name").send_keys("pro")
            form.find_element(By.NAME, "quota").send_keys("1000")
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            confirm(d)
            wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#plans-table tr[data-plan=pro]"))
            shot(d, "07-plans")

        def edits_an_existing_plan():
            d.get(console.url + "/#/plans")
            form = css(d, "form.plan-form[data-plan=pro]")
            assert_reads_clean(d)
            quota = form.find_element(By.NAME, "quota")
            assert quota.get_attribute("value") == "1000"
            quota.clear()
            quota.send_keys("2000")
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            confirm(d)
            wait(d, lambda d: "2000 daily" in d.find_element(By.CSS_SELECTOR, "#plans-table tr[data-plan=pro]").text)
            assert len(d.find_elements(By.CSS_SELECTOR, "form.plan-form")) == 2  # pro's and the new plan's
            shot(d, "07b-plan-edited")

        def refuses_without_csrf_or_session():
            assert fetch(d, "POST", "/api/v1/keys", {"Content-Type": "application/json"}) == 403
            assert fetch(d, "POST", "/api/v1/keys", {"X-CSRF-Token": "forged"}) == 403
            d.delete_all_cookies()
            assert fetch(d, "GET", "/api/v1/keys", {}) == 401
            d.get(console.url + "/")
            css(d, "#token")
            assert d.current_url.endswith("/login")

        def no_csp_violations():
            errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE" and "Content Security Policy" in e["message"]]
            assert not errors, errors

        def read_only_refuses_changes():
            ro = Console(db, tokens, "--read-only")
            try:
                login(d, ro.url)
                assert "read-only" in d.find_element(By.ID, "who").text
                d.get(ro.url + "/#/keys/" + state["id"])
                css(d, "#record")
                assert not d.find_element(By.ID, "revoke").is_displayed()
                assert not d.find_element(By.ID, "new-key").is_displayed() if d.find_elements(By.ID, "new-key") else True
                csrf = d.execute_script("return MS.session.csrf")
                assert fetch(d, "POST", "/api/v1/keys/" + state["id"] + "/revoke", {"X-CSRF-Token": csrf}) == 403
                shot(d, "08-read-only")
            finally:
                ro.stop()

        for name, fn in [("logs in with the token", logs_in),
                         ("creates a key and shows its plaintext once", creates_a_key_shown_once),
                         ("a second key starts from the create form's defaults", second_key_starts_from_defaults),
                         ("searches and filters the list", searches_and_filters),
                         ("the search box shows the answer for its whole text", search_shows_the_latest_answer),
                         ("checks through the C ABI show in the chart", checks_show_in_the_chart),
                         ("rotates and revokes with confirmation", rotates_and_revokes),
                         ("a revoked key's page shows a value for every field", revoked_key_page_reads_clean),
                         ("the audit log names console:alice", audit_names_the_console_user),
                         ("overview and plans render and save", overview_and_plans_render),
                         ("an existing plan is edited in its form", edits_an_existing_plan),
                         ("no CSP violation", no_csp_violations),
                         ("refuses requests without CSRF token or session", refuses_without_csrf_or_session),
                         ("read-only hides and refuses changes", read_only_refuses_changes)]:
            step(name, fn)
    finally:
        d.quit()
        out = console.stop()
        if any(e for _, e in results):
            print("console output:\n" + out)
    if state.get("key"):
        assert state["key"] not in out, "the console printed a plaintext key"
    return results


def main():
    os.makedirs(SHOTS, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = scenario(tmp)
    failed = sum(1 for _, e in results if e)
    print(f"console browser: {len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
