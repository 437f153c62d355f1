"""The web console at ``/ui``, looked at in headless Chromium after a known workload:
the invocation counts of the function types, the dead letters with their decoded
payloads (replayed and discarded by clicking), the committed checkpoints, the state
browser; and as plain HTTP, every page whole and self-contained (no external URL). The
runtime asks for tokens: the browser logs in with the admin token first."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from browser import headless_chromium
from functions import make_test_functions
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait
from support import (
    RuntimeThread,
    client,
    dead_letters,
    module_for,
    post_message,
    running_runtime,
    serve,
    state_values,
    unique_app_id,
    wait_until,
)
from test_cluster import member_config, start_member

from runtime.checkpoints.coordinator import CheckpointConfig
from runtime.config import AccessConfig

pytestmark = pytest.mark.timeout(90)

ADMIN = "console-admin-token-0123"
CLIENT = "console-client-token-012"
COUNTED = 5
"""Messages sent to test/counter, one address each, one after another."""
TEST_POISON = 'tr[data-function-type="test/poison"]'
PAGES = ("/ui", "/ui/checkpoints", "/ui/dead-letters", "/ui/state")
POISON_POLICY = """kind: statefun.v1/failure-policy
spec: {functions: test/poison, deadLetterAfter: 1s}
"""


def send(http: httpx.Client, address: str, value: int | str) -> None:
    answer = post_message(http, address, value)
    assert answer.status_code == 202, answer.text


def letter_to(http: httpx.Client, target: str, status: str = "parked") -> dict[str, Any] | None:
    return next(
        (d for d in dead_letters(http) if d["target"] == target and d["status"] == status), None
    )


def run_workload(http: httpx.Client) -> None:
    """``COUNTED`` messages to test/counter, answered one by one; a poison message to
    test/poison parked while other messages of the type succeed; a message test/sender
    sends to a type nobody serves, parked at once."""
    for i in range(COUNTED):
        send(http, f"test/counter/c{i}", 1)
        wait_until(lambda i=i: state_values(http, f"test/counter/c{i}") == {"count": 1})
    send(http, "test/sender/s", "elsewhere/kind/k1")
    send(http, "test/poison/p", 13)
    deadline = time.monotonic() + 30
    i = 0
    while letter_to(http, "test/poison/p") is None:  # parked once others succeed meanwhile
        assert time.monotonic() < deadline, "the poison message was not parked"
        send(http, f"test/poison/ok{i % 3}", 1)
        i += 1
        time.sleep(0.2)
    wait_until(lambda: letter_to(http, "elsewhere/kind/k1"))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeThread]:
    """One runtime asking for tokens, after the workload, with two checkpoints taken by
    hand (none at an interval: the checkpoints shown are exactly those)."""
    tokens = tmp_path_factory.mktemp("console") / "tokens.yaml"
    tokens.write_text(f"- {{token: {ADMIN}, role: admin}}\n- {{token: {CLIENT}, role: client}}\n")
    with serve(make_test_functions().asgi_app()) as functions:
        module = module_for(
            f"{functions.url}/statefun",
            functions="test/*",
            egresses=("test/out",),
            documents=(POISON_POLICY,),
        )
        with (
            running_runtime(
                module,
                checkpoints=CheckpointConfig(interval=0),
                access=AccessConfig(tokens_file=tokens),
            ) as rt,
            client(rt.url, ADMIN) as http,
        ):
            run_workload(http)
            assert rt.runtime is not None
            for _ in range(2):
                assert rt.run(rt.runtime.coordinator.checkpoint()) is not None
            rt.call_soon(rt.runtime.history.sample)  # an interval that holds the workload
            yield rt


@pytest.fixture(scope="module")
def browser(runtime: RuntimeThread) -> Iterator[WebDriver]:
    """A browser logged in to the console with the admin token, as a person does."""
    driver = headless_chromium()
    try:
        driver.get(f"{runtime.url}/ui")
        assert driver.current_url == f"{runtime.url}/ui/login"
        driver.find_element(By.NAME, "token").send_keys(ADMIN)
        driver.find_element(By.CSS_SELECTOR, "#login button").click()
        WebDriverWait(driver, 10).until(lambda d: d.current_url == f"{runtime.url}/ui")
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def http(runtime: RuntimeThread) -> Iterator[httpx.Client]:
    with client(runtime.url, ADMIN) as http:
        yield http


def test_the_console_asks_for_an_admin_token(runtime: RuntimeThread) -> None:
    """Without a token a page sends the browser to the login form, and nothing else is
    served; a token other than an admin's is refused there; the admin's becomes an
    HttpOnly, SameSite=Strict cookie that opens the pages, but not from another origin."""
    with client(runtime.url) as anonymous:
        for path in (*PAGES, "/ui/static/console.js"):
            page = anonymous.get(path)
            assert (page.status_code, page.headers["location"]) == (303, "/ui/login"), path
        assert anonymous.get("/v1/checkpoints").status_code == 401
        assert anonymous.get("/ui/login").status_code == 200
        for token in (CLIENT, "not-a-token-at-all"):
            refused = anonymous.post("/ui/login", data={"token": token})
            assert refused.status_code == 401
            assert "not an admin token" in refused.text
            assert "set-cookie" not in refused.headers
        logged_in = anonymous.post("/ui/login", data={"token": ADMIN})
        assert logged_in.status_code == 303
        cookie = logged_in.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert anonymous.get("/ui").status_code == 200  # the cookie, kept by the client
        foreign = anonymous.post(
            "/v1/admin/dead-letters/0/discard", headers={"origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        assert foreign.json()["error"] == "origin_refused"


def test_behind_a_tls_proxy_on_loopback_the_console_cookie_is_secure(
    runtime: RuntimeThread,
) -> None:
    """A proxy on the runtime's own host that ends TLS says so in ``X-Forwarded-Proto``
    (trusted from loopback, as uvicorn trusts it): the cookie is then ``Secure``; over
    plain HTTP it cannot be, or the browser would drop it."""
    with client(runtime.url) as browser:
        plain = browser.post("/ui/login", data={"token": ADMIN})
        proxied = browser.post(
            "/ui/login", data={"token": ADMIN}, headers={"x-forwarded-proto": "https"}
        )
    assert (plain.status_code, proxied.status_code) == (303, 303)
    assert "secure" not in plain.headers["set-cookie"].lower()
    assert "; secure" in proxied.headers["set-cookie"].lower()


def until(browser: WebDriver, what: Any, timeout: float = 10) -> Any:
    return WebDriverWait(browser, timeout).until(lambda _: what())


def cell(row: WebElement, field: str) -> str:
    return row.find_element(By.CSS_SELECTOR, f'[data-field="{field}"]').text


def test_every_page_is_html_that_needs_nothing_from_elsewhere(
    runtime: RuntimeThread, http: httpx.Client
) -> None:
    assets = set()
    for path in PAGES:
        page = http.get(path)
        assert page.status_code == 200, (path, page.text)
        assert page.headers["content-type"].startswith("text/html")
        links = re.findall(r'(?<![\w-])(?:src|href|action)="([^"]*)"', page.text)
        assert links, path
        for link in links:
            assert re.match(r"/[^/]", link), (path, link)
        assets |= {link for link in links if link.startswith("/ui/static/")}
    assert assets == {"/ui/static/console.css", "/ui/static/console.js"}
    for asset in assets:
        served = http.get(asset)
        assert served.status_code == 200
        assert not re.search(r"https?:|url\(", served.text), asset


def test_bad_input_to_a_page_is_a_clear_error(http: httpx.Client) -> None:
    answer = http.get("/ui/dead-letters", params={"from": "-1"})
    assert answer.status_code == 400
    assert answer.json()["error"] == "bad_request"
    assert "from" in answer.json()["detail"]
    assert http.get("/ui/nothing-here").json()["error"] == "not_found"


def test_the_overview_shows_each_function_type_counted(
    runtime: RuntimeThread, browser: WebDriver
) -> None:
    browser.get(f"{runtime.url}/ui")
    rows = {
        row.get_attribute("data-function-type"): row
        for row in browser.find_elements(By.CSS_SELECTOR, "tr[data-function-type]")
    }
    assert {"test/counter", "test/poison", "test/sender"} <= rows.keys()
    counter = rows["test/counter"]
    # The first batch goes once more, with the states the function declared in answer.
    assert cell(counter, "invocations") == str(COUNTED + 1)
    assert cell(counter, "error-rate") == "0.0 %"
    assert cell(counter, "dead-letters") == "0"
    assert re.fullmatch(r"\d+(\.\d+)? ms", cell(counter, "p99"))
    assert re.fullmatch(r"\d+\.\d/s", cell(counter, "rate"))
    poison = rows["test/poison"]
    assert cell(poison, "dead-letters") == "1"
    error_rate = cell(poison, "error-rate")
    assert error_rate.endswith(" %")
    assert float(error_rate.removesuffix(" %")) > 0
    # Three small plots a row: rate, errors, p99.
    assert len(counter.find_elements(By.CSS_SELECTOR, "svg.spark")) == 3
    assert "one process" in browser.find_element(By.ID, "where").text


def test_the_overview_refreshes_its_figures_in_place(
    runtime: RuntimeThread, browser: WebDriver, http: httpx.Client
) -> None:
    browser.get(f"{runtime.url}/ui")
    browser.execute_script("document.body.dataset.loaded = 'once'")  # gone on a reload
    before = int(cell(browser.find_element(By.CSS_SELECTOR, TEST_POISON), "invocations"))
    # One more message to an address that has its state (one batch, sent once).
    count = state_values(http, "test/poison/ok0")["count"]
    send(http, "test/poison/ok0", 1)
    wait_until(lambda: state_values(http, "test/poison/ok0") == {"count": count + 1})
    # What the page does every few seconds, done now.
    browser.execute_async_script(
        "refresh(document.getElementById('function-types')).then(arguments[0])"
    )
    after = cell(browser.find_element(By.CSS_SELECTOR, TEST_POISON), "invocations")
    assert int(after) == before + 1
    assert browser.execute_script("return document.body.dataset.loaded") == "once"


def test_the_dead_letters_show_their_payloads_and_go_when_replayed_or_discarded(
    runtime: RuntimeThread, browser: WebDriver, http: httpx.Client
) -> None:
    poison = letter_to(http, "test/poison/p")
    unserved = letter_to(http, "elsewhere/kind/k1")
    assert poison is not None
    assert unserved is not None
    browser.get(f"{runtime.url}/ui/dead-letters")

    def row(letter: dict[str, Any]) -> WebElement:
        return browser.find_element(By.CSS_SELECTOR, f'tr[data-offset="{letter["offset"]}"]')

    poisoned = row(poison)
    assert cell(poisoned, "payload") == "13"
    assert "io.statefun.types/int" in poisoned.text
    assert "13 is poison" in poisoned.text
    assert cell(poisoned, "status") == "parked"

    poisoned.find_element(By.CSS_SELECTOR, 'button[data-action="discard"]').click()
    until(browser, lambda: cell(row(poison), "status") == "discarded")
    assert not row(poison).find_elements(By.TAG_NAME, "button")
    assert letter_to(http, "test/poison/p", "discarded") is not None

    row(unserved).find_element(By.CSS_SELECTOR, 'button[data-action="replay"]').click()
    until(browser, lambda: cell(row(unserved), "status") == "replayed")
    assert letter_to(http, "elsewhere/kind/k1", "replayed") is not None
    # Replayed, the message went to the log again, and nobody serves it still.
    wait_until(lambda: letter_to(http, "elsewhere/kind/k1", "parked"))

    # A refused action says why in the row: a discarded letter cannot be replayed.
    browser.execute_script(
        "const b = document.createElement('button'); b.dataset.action = 'replay';"
        "b.dataset.offset = arguments[0]; b.textContent = 'Replay';"
        "b.addEventListener('click', () => deadLetterAction(b));"
        "document.querySelector(`tr[data-offset='${arguments[0]}'] .actions`).prepend(b);",
        poison["offset"],
    )
    row(poison).find_element(By.CSS_SELECTOR, 'button[data-action="replay"]').click()
    until(
        browser, lambda: "was discarded" in row(poison).find_element(By.CLASS_NAME, "outcome").text
    )


def test_the_checkpoints_page_lists_the_committed_checkpoints(
    runtime: RuntimeThread, browser: WebDriver, http: httpx.Client
) -> None:
    committed = [c["id"] for c in http.get("/v1/checkpoints").json()["checkpoints"]]
    assert len(committed) == 2
    browser.get(f"{runtime.url}/ui/checkpoints")
    shown = [
        int(r.get_attribute("data-checkpoint") or "")
        for r in browser.find_elements(By.CSS_SELECTOR, "#checkpoints tr[data-checkpoint]")
    ]
    assert shown == sorted(committed, reverse=True)
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.timeline line.checkpoint")) == 2
    assert "No rollback" in browser.page_source


def test_the_state_browser_lists_addresses_and_shows_state_live_and_as_of_a_checkpoint(
    runtime: RuntimeThread, browser: WebDriver, http: httpx.Client
) -> None:
    browser.get(f"{runtime.url}/ui/state")
    form = browser.find_element(By.ID, "state-browser")
    form.find_element(By.NAME, "type").send_keys("test/counter")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    def listed() -> list[str]:
        return [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#addresses a")]

    until(browser, lambda: len(listed()) == COUNTED)
    assert sorted(listed()) == [f"c{i}" for i in range(COUNTED)]

    def shown_state() -> dict[str, str]:
        return {
            r.get_attribute("data-name") or "": r.find_elements(By.TAG_NAME, "td")[2].text
            for r in browser.find_elements(By.CSS_SELECTOR, "#state tbody tr")
        }

    browser.find_element(By.CSS_SELECTOR, '#addresses a[data-id="c2"]').click()
    until(browser, lambda: shown_state() == {"count": "1"})
    assert "(live)" in browser.find_element(By.ID, "state-of").text

    # As of the first checkpoint: the same, from the checkpoint.
    first = min(c["id"] for c in http.get("/v1/checkpoints").json()["checkpoints"])
    Select(form.find_element(By.NAME, "checkpoint")).select_by_value(str(first))
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    until(browser, lambda: len(listed()) == COUNTED)
    browser.find_element(By.CSS_SELECTOR, '#addresses a[data-id="c2"]').click()
    until(
        browser, lambda: f"as of checkpoint {first}" in browser.find_element(By.ID, "state-of").text
    )
    assert shown_state() == {"count": "1"}

    # A checkpoint no longer kept (a page left open while checkpoints went on): the
    # API's answer, in words.
    browser.execute_script(
        "const o = document.createElement('option'); o.value = '999'; o.text = 'gone';"
        "document.querySelector('select[name=checkpoint]').append(o);"
    )
    Select(form.find_element(By.NAME, "checkpoint")).select_by_value("999")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    until(browser, lambda: "999" in browser.find_element(By.ID, "state-error").text)
    assert not listed()


@pytest.mark.kafka
def test_a_members_console_says_its_figures_are_its_own(kafka_bootstrap: str) -> None:
    with serve(make_test_functions().asgi_app()) as functions:
        member = start_member(
            member_config(f"{functions.url}/statefun", kafka_bootstrap, unique_app_id())
        )
        try:
            with client(member.url) as http:
                me = http.get("/v1/cluster").json()["me"]
                page = http.get("/ui")
                assert page.status_code == 200
                text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page.text))
                assert f"member {me} of 1 (coordinator)" in text
                assert f"served by member {me}: function-type figures are this member's own" in text
                assert "checkpoints, rollbacks and dead letters are the whole application's" in text
                for path in PAGES:
                    assert http.get(path).status_code == 200, path
        finally:
            member.stop()
