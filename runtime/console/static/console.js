// The statefun console's few behaviours: the overview refreshing itself, the dead
// letters' replay and discard buttons, and the state browser. Everything goes through
// the runtime's public HTTP API; nothing is fetched from elsewhere.
"use strict";

// Replace an element (and the header's summary) by its newer self from the server.
async function refresh(element) {
  const response = await fetch(location.href, { headers: { Accept: "text/html" } });
  if (!response.ok) return;
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  const newer = page.getElementById(element.id);
  const where = page.getElementById("where");
  if (newer) element.replaceChildren(...newer.childNodes);
  if (where) document.getElementById("where").replaceChildren(...where.childNodes);
}

// An element with data-refresh="N" is refreshed every N seconds; while the runtime is
// away, the next refresh tries again.
function refreshEvery(element) {
  setInterval(() => refresh(element).catch(() => {}), Number(element.dataset.refresh) * 1000);
}

// The error of an API answer, as the API words it ({"error": code, "detail": text}).
async function problem(response) {
  try {
    const body = await response.json();
    return body.detail || body.error || response.statusText;
  } catch (error) {
    return `${response.status} ${response.statusText}`;
  }
}

// Replay or discard a dead letter, then show its new status in its row.
async function deadLetterAction(button) {
  const row = button.closest("tr");
  const outcome = row.querySelector(".outcome");
  const action = button.dataset.action;
  row.querySelectorAll("button").forEach((b) => (b.disabled = true));
  outcome.textContent = "";
  const response = await fetch(`/v1/admin/dead-letters/${button.dataset.offset}/${action}`, {
    method: "POST",
  });
  if (response.ok) {
    const status = row.querySelector('[data-field="status"]');
    status.textContent = status.className = action === "replay" ? "replayed" : "discarded";
    status.classList.add("badge");
    row.querySelectorAll("button").forEach((b) => b.remove());
  } else {
    outcome.textContent = await problem(response);
    row.querySelectorAll("button").forEach((b) => (b.disabled = false));
  }
}

// Each segment of an address path encoded on its own (an id may hold "/").
function addressPath(type, id) {
  const [namespace, name] = type.split("/");
  return [namespace, name, id].map(encodeURIComponent).join("/");
}

function stateBrowser(form) {
  const list = document.getElementById("addresses");
  const more = document.getElementById("more-addresses");
  const error = document.getElementById("state-error");
  const table = document.getElementById("state");
  const empty = document.getElementById("state-empty");
  let query = null; // {type, checkpoint, after}

  function asOf(params) {
    if (query.checkpoint) params.set("checkpoint", query.checkpoint);
    return params.toString() ? `?${params}` : "";
  }

  async function listAddresses() {
    const [namespace, name] = query.type.split("/").map(encodeURIComponent);
    const params = new URLSearchParams({ limit: "50" });
    if (query.after !== null) params.set("after", query.after);
    const response = await fetch(`/v1/addresses/${namespace}/${name}${asOf(params)}`);
    if (!response.ok) {
      error.textContent = await problem(response);
      return;
    }
    const page = await response.json();
    for (const id of page.addresses) {
      const link = document.createElement("a");
      link.href = "#";
      link.textContent = id;
      link.dataset.id = id;
      link.addEventListener("click", (event) => {
        event.preventDefault();
        list.querySelectorAll("a").forEach((a) => a.removeAttribute("aria-current"));
        link.setAttribute("aria-current", "true");
        showState(id);
      });
      const item = document.createElement("li");
      item.append(link);
      list.append(item);
    }
    query.after = page.next;
    more.hidden = page.next === null;
    document.getElementById("addresses-of").textContent =
      `of ${query.type}` + (page.checkpoint !== null ? ` as of checkpoint ${page.checkpoint}` : "");
  }

  async function showState(id) {
    error.textContent = "";
    const response = await fetch(`/v1/state/${addressPath(query.type, id)}${asOf(new URLSearchParams())}`);
    const body = table.querySelector("tbody");
    body.replaceChildren();
    if (!response.ok) {
      table.hidden = empty.hidden = true;
      error.textContent = await problem(response);
      return;
    }
    const answer = await response.json();
    const names = Object.keys(answer.state).sort();
    for (const name of names) {
      const value = answer.state[name];
      const row = body.insertRow();
      row.dataset.name = name;
      row.insertCell().textContent = name;
      row.insertCell().textContent = value.type;
      const cell = row.insertCell();
      const code = document.createElement("code");
      code.textContent = JSON.stringify(value.value);
      cell.append(code);
    }
    table.hidden = names.length === 0;
    empty.hidden = names.length !== 0;
    const when = answer.checkpoint !== undefined && answer.checkpoint !== null
      ? ` as of checkpoint ${answer.checkpoint}` : " (live)";
    document.getElementById("state-of").textContent = `of ${query.type}/${id}${when}`;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    query = { type: data.get("type").trim(), checkpoint: data.get("checkpoint"), after: null };
    list.replaceChildren();
    table.hidden = empty.hidden = true;
    error.textContent = "";
    listAddresses();
  });
  more.addEventListener("click", listAddresses);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(refreshEvery);
  document.querySelectorAll("button[data-action]").forEach((button) =>
    button.addEventListener("click", () => deadLetterAction(button)),
  );
  const browser = document.getElementById("state-browser");
  if (browser) stateBrowser(browser);
});
