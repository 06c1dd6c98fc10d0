// The paycore ops console: plain JavaScript, no build. Every piece of data comes from the
// ops routes with the ops key (kept in sessionStorage: entered once per browser session);
// every action is a command the API publishes. Text from the core is only ever set as
// text (textContent), never as HTML: dead letters carry whatever a client sent.
"use strict";

const KEY = "paycore.ops.key";
const WHO = "paycore.ops.operator";
const STRIP_EVERY_MS = 2000;
const POLL_EVERY_MS = 500;
const POLL_FOR_MS = 30000;

// ------------------------------------------------------------------ small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function when(ms) {
  if (!ms) return "";
  return new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC");
}

function age(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

function money(minor, currency) {
  return `${Number(minor).toLocaleString("en")} ${currency || ""}`.trim();
}

function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)),
    (b) => b.toString(16).padStart(2, "0")).join("");
}

function message(kind, text, id) {
  return el("div", {class: `message ${kind}`, role: kind === "error" ? "alert" : "status",
    id}, text);
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

class Refused extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? problem.detail : `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

async function api(method, path, body, headers) {
  const key = sessionStorage.getItem(KEY);
  const answer = await fetch(path, {
    method,
    headers: Object.assign({"Authorization": `Bearer ${key || ""}`},
      body === undefined ? {} : {"Content-Type": "application/json"}, headers || {}),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await answer.text();
  let doc = null;
  try { doc = text ? JSON.parse(text) : null; } catch (e) { doc = {detail: text}; }
  if (answer.status === 401 || answer.status === 403) {
    showKeyGate(`Refused (${doc && doc.code ? doc.code : answer.status}): ` +
      `${doc && doc.detail ? doc.detail : "the ops key is needed"}`);
    throw new Refused(answer.status, doc);
  }
  if (!answer.ok) throw new Refused(answer.status, doc);
  return doc;
}

function problemText(error) {
  const p = error.problem || {};
  const fields = (p.errors || []).map((e) => `${e.field}: ${e.message}`).join("; ");
  return `${p.code || "error"}: ${p.detail || error.message}${fields ? ` (${fields})` : ""}`;
}

async function until(read, done) {
  const deadline = Date.now() + POLL_FOR_MS;
  let last = await read();
  while (!done(last) && Date.now() < deadline) {
    await sleep(POLL_EVERY_MS);
    last = await read();
  }
  return last;
}

// ------------------------------------------------------------------ the key, once a session

function showKeyGate(why) {
  sessionStorage.removeItem(KEY);
  stopStrip();
  const main = document.getElementById("main");
  const shown = document.getElementById("key-form");
  if (shown && shown.dataset.why === why) return;  // the strip and the page both refused
  const keyInput = el("input", {id: "ops-key", type: "password", autocomplete: "off",
    placeholder: "pk_…"});
  const whoInput = el("input", {id: "operator", placeholder: "your name, e.g. ana",
    value: sessionStorage.getItem(WHO) || ""});
  const form = el("form", {class: "card keygate", id: "key-form", onsubmit: (event) => {
    event.preventDefault();
    const who = whoInput.value.trim();
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(who)) {
      form.querySelector(".message")?.remove();
      form.append(message("error", "Your name: letters, digits, . _ - (it goes on the record)"));
      return;
    }
    sessionStorage.setItem(KEY, keyInput.value.trim());
    sessionStorage.setItem(WHO, who);
    render();
  }},
  el("h1", {}, "Operations sign-in"),
  el("p", {class: "muted"}, "The ops key (from .paycore/api-keys.json on a local stack). " +
    "It stays in this browser tab's session only."),
  el("label", {for: "ops-key"}, "Ops key"), keyInput,
  el("label", {for: "operator"}, "Your name (recorded with every action)"), whoInput,
  el("div", {class: "row gap-top"},
    el("button", {type: "submit", id: "sign-in"}, "Open the console")),
  why ? message("error", why, "refused") : null);
  form.dataset.why = why;
  main.replaceChildren(form);
  document.getElementById("who").replaceChildren();
  document.getElementById("strip").replaceChildren(
    el("span", {class: "muted"}, "Sign in to see the live summary."));
}

function operator() { return sessionStorage.getItem(WHO) || ""; }

// ------------------------------------------------------------------ the live strip

let stripTimer = null;

function stopStrip() {
  if (stripTimer) clearInterval(stripTimer);
  stripTimer = null;
}

function metric(id, label, value, level) {
  return el("div", {class: `metric ${level || ""}`, id}, el("b", {}, value),
    el("small", {}, label));
}

async function refreshStrip() {
  let s;
  try { s = await api("GET", "/v1/ops/summary"); } catch (e) { return; }
  const rate = s.success_rate === null ? "–" : `${(100 * s.success_rate).toFixed(1)} %`;
  const audit = s.audit_ok === null ? "not reported" :
    s.audit_ok ? "balanced" : `${s.audit_violations} violations`;
  document.getElementById("strip").replaceChildren(
    metric("m-throughput", `payments/s (last ${s.window_s} s)`, s.throughput_per_s.toFixed(2)),
    metric("m-success", `success rate (${s.finals} final)`, rate,
      s.success_rate === null ? "" : s.success_rate >= 0.8 ? "ok" : "warn"),
    metric("m-reviews", "open reviews", s.open_reviews, s.open_reviews ? "warn" : "ok"),
    metric("m-exceptions", "open exceptions", s.open_exceptions,
      s.open_exceptions ? "warn" : "ok"),
    metric("m-deadletters", "open dead letters", s.open_dead_letters,
      s.open_dead_letters ? "warn" : "ok"),
    metric("m-audit", s.audit_age_ms === null ? "ledger audit" :
      `ledger audit (${age(s.audit_age_ms)} ago)`, audit,
      s.audit_ok === null ? "warn" : s.audit_ok ? "ok" : "bad"),
    metric("m-payments", "payments known", s.payments));
}

function startStrip() {
  if (stripTimer) return;
  refreshStrip();
  stripTimer = setInterval(refreshStrip, STRIP_EVERY_MS);
}

// ------------------------------------------------------------------ payments and timelines

async function searchPage(query) {
  const input = el("input", {id: "search-input", size: 48, value: query || "",
    placeholder: "payment id, merchant order no or channel serial"});
  const results = el("div", {id: "search-results"});
  const form = el("form", {class: "card row", onsubmit: (event) => {
    event.preventDefault();
    location.hash = `#/search/${encodeURIComponent(input.value.trim())}`;
  }}, input, el("button", {type: "submit", id: "search-go"}, "Search"));
  const page = [el("h1", {}, "Payments"), form, results];
  if (query) results.append(await searchResults(query));
  return page;
}

async function searchResults(query) {
  const found = await api("GET", `/v1/ops/search?q=${encodeURIComponent(query)}`);
  if (!found.matches.length) return message("info", `Nothing matches “${query}”.`, "no-match");
  if (found.matches.length === 1) {
    location.hash = `#/payment/${encodeURIComponent(found.matches[0].payment_id)}`;
    return el("p", {class: "muted"}, "Opening…");
  }
  return el("table", {id: "matches"}, el("tr", {}, ["payment", "merchant", "order no",
    "channel serial", "status", "matched by"].map((h) => el("th", {}, h))),
  found.matches.map((m) => el("tr", {class: "clickable", onclick: () => {
    location.hash = `#/payment/${encodeURIComponent(m.payment_id)}`;
  }}, el("td", {class: "mono"}, m.payment_id), el("td", {}, m.merchant_id),
  el("td", {}, m.merchant_order_no), el("td", {class: "mono"}, m.channel_serial),
  el("td", {}, el("span", {class: `badge ${m.status}`}, m.status)), el("td", {}, m.matched_by))));
}

async function paymentPage(paymentId) {
  const t = await api("GET", `/v1/ops/payments/${encodeURIComponent(paymentId)}/timeline`);
  const p = t.payment;
  const facts = p ? el("dl", {class: "facts", id: "payment-facts"},
    el("dt", {}, "status"), el("dd", {}, el("span", {class: `badge ${p.status}`,
      id: "payment-status"}, p.status)),
    el("dt", {}, "payment id"), el("dd", {class: "mono"}, p.payment_id),
    el("dt", {}, "merchant / order no"), el("dd", {}, `${p.merchant_id} / ${p.merchant_order_no}`),
    el("dt", {}, "channel / serial"), el("dd", {}, `${p.channel} / ${p.channel_serial || "–"}`),
    el("dt", {}, "amount"), el("dd", {}, money(p.amount_minor, p.currency)),
    el("dt", {}, "authorized / captured / refunded"),
    el("dd", {}, `${p.authorized_minor} / ${p.captured_minor} / ${p.refunded_minor}`))
    : message("info", "No status event yet: only the records below.");
  const items = el("ol", {class: "timeline", id: "timeline"}, t.items.map((i) =>
    el("li", {class: `item ${i.ignored ? "ignored" : ""}`, "data-kind": i.kind},
      el("span", {class: "when"}, when(i.at_ms)),
      el("span", {class: `kind ${i.kind}`}, i.kind.replace(/_/g, " ")),
      el("span", {class: "what"}, el("b", {}, i.title + (i.count > 1 ? ` ×${i.count}` : "")),
        el("span", {class: "mono"}, i.detail),
        i.ignored ? el("div", {class: "note"}, `ignored: ${i.ignored}`) : null,
        i.note ? el("div", {class: "note"}, i.note) : null))));
  return [el("h1", {}, `Payment ${paymentId}`),
    el("div", {class: "card"}, facts),
    el("h2", {}, `Timeline (${t.items.length} items` +
      (t.dropped ? `, ${t.dropped} oldest not kept)` : ")")),
    el("div", {class: "card"}, items),
    el("div", {class: "row"}, el("button", {class: "secondary", id: "refresh",
      onclick: render}, "Refresh"))];
}

// ------------------------------------------------------------------ risk reviews

function rulesFired(p) {
  const held = [...p.history].reverse().find((h) => h.status === "risk_review");
  return held ? held.reason : "";
}

async function reviewsPage() {
  const queue = await api("GET", "/v1/ops/reviews");
  const rows = queue.reviews.map((p) => reviewRow(p));
  return [el("h1", {}, `Risk review queue (${queue.reviews.length})`),
    queue.reviews.length ? el("table", {id: "reviews"}, el("tr", {}, ["payment",
      "merchant / order no", "amount", "held", "rules that fired", "decision"].map(
      (h) => el("th", {}, h))), rows) :
      message("info", "Nothing waits for a review.", "no-reviews")];
}

function reviewRow(p) {
  const comment = el("input", {class: "review-comment", placeholder: "comment", size: 24});
  const outcome = el("div", {class: "outcome"});
  const key = newKey();
  const decide = async (decision, buttons) => {
    buttons.forEach((b) => { b.disabled = true; });
    outcome.replaceChildren(message("info", `${decision} sent: waiting for the outcome…`));
    try {
      await api("POST", `/v1/ops/payments/${encodeURIComponent(p.payment_id)}/review`,
        {decision, reviewer: operator(), comment: comment.value}, {"Idempotency-Key": key});
      const after = await until(() => api("GET", `/v1/payments/${p.payment_id}`),
        (x) => !["risk_review", "created", "processing"].includes(x.status));
      outcome.replaceChildren(after.status === "risk_review" ?
        message("error", "No outcome yet: look again later.") :
        message(after.status === "failed" ? "error" : "ok", `${decision === "approve" ?
          "approved" : "rejected"}: the payment is now ${after.status}`,
        `outcome-${p.payment_id}`));
    } catch (error) {
      outcome.replaceChildren(message("error", problemText(error)));
      buttons.forEach((b) => { b.disabled = false; });
    }
  };
  const approve = el("button", {class: "approve"}, "Approve");
  const reject = el("button", {class: "danger reject"}, "Reject");
  approve.addEventListener("click", () => decide("approve", [approve, reject]));
  reject.addEventListener("click", () => decide("reject", [approve, reject]));
  const held = p.history[p.history.length - 1];
  return el("tr", {id: `review-${p.payment_id}`},
    el("td", {}, el("a", {href: `#/payment/${p.payment_id}`, class: "mono"}, p.payment_id)),
    el("td", {}, `${p.merchant_id} / ${p.merchant_order_no}`),
    el("td", {class: "amount"}, money(p.amount_minor, p.currency)),
    el("td", {}, age(Date.now() - held.at_ms)),
    el("td", {class: "rules"}, rulesFired(p)),
    el("td", {}, el("div", {class: "row"}, comment, approve, reject), outcome));
}

// ------------------------------------------------------------------ reconciliation

const KINDS = ["missing_at_channel", "missing_in_ours", "amount_mismatch", "fee_mismatch",
  "status_mismatch", "duplicate_settlement", "currency_mismatch", "date_out_of_window"];

async function exceptionsPage(params) {
  const kind = params.get("kind") || "";
  const open = params.get("state") !== "all";
  const query = kind ? `?kind=${kind}&limit=200` : "?limit=200";
  const found = await api("GET", `/v1/ops/recon/exceptions${query}`);
  const shown = found.exceptions.filter((e) => !open || e.state.state === "open");
  const select = el("select", {id: "kind-filter", onchange: () => go(select.value,
    all.checked)}, el("option", {value: ""}, "every kind"),
  KINDS.map((k) => el("option", {value: k, selected: k === kind}, k)));
  const all = el("input", {type: "checkbox", id: "show-all", checked: !open,
    onchange: () => go(select.value, all.checked)});
  const go = (k, everything) => {
    location.hash = `#/exceptions?kind=${k}&state=${everything ? "all" : "open"}`;
  };
  const detail = el("div", {id: "exception-detail"});
  const table = el("table", {id: "exceptions"}, el("tr", {}, ["kind", "payment", "channel",
    "age", "reason", "state"].map((h) => el("th", {}, h))),
  shown.map((e) => el("tr", {class: "clickable exception", "data-id": e.exception_id,
    "data-kind": e.kind, onclick: (event) => {
      table.querySelectorAll("tr.selected").forEach((r) => r.classList.remove("selected"));
      event.currentTarget.classList.add("selected");
      showException(e.exception_id, detail);
    }}, el("td", {}, e.kind), el("td", {class: "mono"}, e.payment_id || "–"),
  el("td", {}, e.channel), el("td", {}, age(e.age_ms)), el("td", {}, e.reason),
  el("td", {}, el("span", {class: `badge ${e.state.state}`}, e.state.state.replace(/_/g, " "))))));
  const byKind = {};
  for (const e of found.exceptions.filter((x) => x.state.state === "open")) {
    const bucket = e.age_ms < 3600000 ? "< 1 h" : e.age_ms < 86400000 ? "< 1 d" : "older";
    byKind[e.kind] = byKind[e.kind] || {"< 1 h": 0, "< 1 d": 0, "older": 0};
    byKind[e.kind][bucket] += 1;
  }
  const ages = el("table", {id: "open-by-kind"}, el("tr", {}, ["open by kind", "< 1 h", "< 1 d",
    "older"].map((h) => el("th", {}, h))), Object.keys(byKind).sort().map((k) => el("tr", {},
    el("td", {}, k), ["< 1 h", "< 1 d", "older"].map((b) => el("td", {}, byKind[k][b])))));
  return [el("h1", {}, `Reconciliation exceptions (${shown.length} ${open ? "open" : "in all"})`),
    el("div", {class: "card row"}, "Kind", select,
      el("label", {for: "show-all"}, all, " resolved ones too")),
    Object.keys(byKind).length ? el("div", {class: "card"}, ages) : null,
    shown.length ? table : message("info", "No exception here.", "no-exceptions"), detail];
}

function records(e) {
  const rows = [];
  if (e.order) rows.push(["order", `${e.order.status}: ${money(e.order.amount_minor,
    e.order.currency)}, captured ${e.order.captured_minor}, refunded ${e.order.refunded_minor}` +
    `, via ${e.order.channel} (serial ${e.order.channel_serial || "–"})`]);
  for (const cb of e.callbacks) {
    rows.push(["channel said", `${cb.operation} ${cb.outcome} ${money(cb.amount_minor,
      cb.currency)} (request ${cb.request_id})`]);
  }
  rows.push(["ledger", `clearing ${e.ledger.clearing_minor}, settled ${e.ledger.settled_minor}` +
    `, fee ${e.ledger.fee_minor}, ${e.ledger.postings.length} legs`]);
  for (const line of e.lines) {
    rows.push([`line ${line.line_id}`, `${money(line.amount_minor, line.currency)}, fee ` +
      `${line.fee_minor}, settled on ${line.settled_on} (report ${line.period || "?"})`]);
  }
  return el("table", {class: "records"}, rows.map(([what, said]) =>
    el("tr", {}, el("th", {}, what), el("td", {}, said))));
}

async function showException(id, into) {
  const e = await api("GET", `/v1/ops/recon/exceptions/${id}`);
  const s = e.state;
  const stateText = s.state === "open" ? "open: waiting for ops" :
    s.state === "resolved_by_rule" ? `resolved by rule: ${s.rule}` :
      `${s.state}: ${s.action} by ${s.resolver} at ${when(s.at_ms)} — “${s.comment}”` +
      (s.item_state ? `; reconciliation item ${s.item_state}` : "");
  const box = el("div", {class: "card", id: "exception-card"},
    el("h2", {}, `${e.kind} on ${e.payment_id || "an unknown payment"}`),
    el("p", {}, e.reason),
    el("p", {}, el("span", {class: `badge ${s.state}`, id: "exception-state"}, stateText)),
    el("h2", {}, "Records involved"), records(e));
  if (e.actions.length) box.append(resolveForm(e));
  else if (s.state === "open") box.append(message("info", e.not_resolvable));
  into.replaceChildren(box);
}

function resolveForm(e) {
  const action = el("select", {id: "resolve-action"}, e.actions.map((a) =>
    el("option", {value: a}, a.replace(/_/g, " "))));
  const comment = el("textarea", {id: "resolve-comment", rows: 2,
    placeholder: "why (required: it goes on the record)"});
  const shown = el("div", {id: "preview"});
  const key = newKey();
  const previewIt = async () => {
    shown.replaceChildren();
    try {
      const p = await api("POST", `/v1/ops/recon/exceptions/${e.exception_id}/preview`,
        {action: action.value});
      shown.append(previewTable(p), el("div", {class: "row"},
        el("button", {id: "confirm-resolve", onclick: (event) => resolveIt(p, event.target)},
          p.moves_money ? "Confirm: post these entries" : "Confirm")));
    } catch (error) { shown.append(message("error", problemText(error))); }
  };
  const resolveIt = async (p, button) => {
    button.disabled = true;
    try {
      await api("POST", `/v1/ops/recon/exceptions/${e.exception_id}/resolve`,
        {action: p.action, resolver: operator(), comment: comment.value, confirm: p.digest},
        {"Idempotency-Key": key});
      shown.append(message("info", "Resolution sent: waiting for reconciliation…"));
      const after = await until(() => api("GET", `/v1/ops/recon/exceptions/${e.exception_id}`),
        (x) => x.state.state === "resolved");
      shown.append(after.state.state === "resolved" ?
        message("ok", `Resolved by ${after.state.resolver}: ${after.state.action}; ` +
          `reconciliation item ${after.state.item_state}`, "resolution-outcome") :
        message("error", `Not resolved yet (${after.state.state}): look at the payment's ` +
          "timeline for a refusal."));
    } catch (error) {
      shown.append(message("error", problemText(error)));
      button.disabled = false;
    }
  };
  return el("div", {}, el("h2", {}, "Resolve"), el("div", {class: "row"}, "Action", action,
    el("button", {class: "secondary", id: "preview-resolve", onclick: previewIt},
      "Preview entries")), comment, shown);
}

function previewTable(p) {
  const entries = p.entries.map((entry) => el("div", {class: "entry"},
    el("b", {}, `${entry.reason}${entry.entry_id ? ` (${entry.entry_id})` : ""}`),
    el("table", {}, entry.legs.map((leg) => el("tr", {},
      el("td", {class: "mono"}, leg.account_id),
      el("td", {class: "amount"}, money(leg.amount_minor, leg.currency)))))));
  return el("div", {class: "card", id: "preview-entries"},
    el("h2", {}, p.moves_money ? "These entries will be posted" : "Nothing is posted"),
    entries, el("ul", {}, p.effects.map((x) => el("li", {}, x))));
}

// ------------------------------------------------------------------ dead letters

async function deadLettersPage(params) {
  const stage = params.get("stage") || "";
  const reason = params.get("reason") || "";
  const state = params.get("state") || "open";
  const query = new URLSearchParams({limit: "200"});
  if (stage) query.set("stage", stage);
  if (reason) query.set("reason", reason);
  if (state !== "all") query.set("state", state);
  const found = await api("GET", `/v1/ops/deadletters?${query}`);
  const stages = el("select", {id: "stage-filter"}, el("option", {value: ""}, "every stage"),
    Object.keys(found.stages).sort().map((s) => el("option", {value: s, selected: s === stage},
      `${s} (${found.stages[s]})`)));
  const reasonInput = el("input", {id: "reason-filter", value: reason,
    placeholder: "reason contains…", list: "reasons"});
  const states = el("select", {id: "state-filter"}, ["open", "replayed", "discarded", "all"]
    .map((s) => el("option", {value: s, selected: s === state}, s)));
  const filter = el("form", {class: "card row", onsubmit: (event) => {
    event.preventDefault();
    const next = new URLSearchParams({stage: stages.value, reason: reasonInput.value.trim(),
      state: states.value});
    location.hash = `#/deadletters?${next}`;
  }}, "Stage", stages, "Reason", reasonInput,
  el("datalist", {id: "reasons"}, Object.keys(found.reasons).map((r) =>
    el("option", {value: r}))), "State", states,
  el("button", {type: "submit", id: "filter-go"}, "Show"));
  const table = el("table", {id: "dead-letters"}, el("tr", {}, ["when", "stage", "reason",
    "topic", "payment", "state"].map((h) => el("th", {}, h))),
  found.dead_letters.map((d) => el("tr", {class: "clickable dead-letter",
    "data-id": d.dead_letter_id, onclick: () => {
      location.hash = `#/deadletter/${d.dead_letter_id}`;
    }}, el("td", {class: "when"}, when(d.at_ms)), el("td", {}, d.stage),
  el("td", {}, d.reason), el("td", {class: "mono"}, `${d.topic}[${d.partition}]@${d.offset}`),
  el("td", {class: "mono"}, d.payment_id || "–"),
  el("td", {}, el("span", {class: `badge ${d.state}`}, d.state)))));
  return [el("h1", {}, `Dead letters (${found.total})`), filter,
    found.dead_letters.length ? table : message("info", "No dead letter here.", "no-dead")];
}

async function deadLetterPage(id) {
  const d = await api("GET", `/v1/ops/deadletters/${encodeURIComponent(id)}`);
  const raw = d.value_text !== null ? d.value_text : `base64: ${d.value_base64}`;
  const r = d.resolved;
  const stateText = r ? `${d.state} by ${r.operator} at ${when(r.at_ms)}` +
    (r.note ? ` — “${r.note}”` : "") : d.state;
  const facts = el("dl", {class: "facts"},
    el("dt", {}, "state"), el("dd", {}, el("span", {class: `badge ${d.state}`,
      id: "dead-letter-state"}, stateText)),
    el("dt", {}, "stage"), el("dd", {}, d.stage),
    el("dt", {}, "reason"), el("dd", {id: "dead-letter-reason"}, d.reason),
    el("dt", {}, "from"), el("dd", {class: "mono"}, `${d.topic}[${d.partition}]@${d.offset}`),
    el("dt", {}, "parked at"), el("dd", {}, when(d.at_ms)),
    el("dt", {}, "key"), el("dd", {class: "mono"}, d.key_text ?? (d.key_base64 ?
      `base64: ${d.key_base64}` : "(none)")),
    el("dt", {}, "payment"), el("dd", {}, d.payment_id ? el("a", {href:
      `#/payment/${d.payment_id}`, class: "mono"}, d.payment_id) : "–"));
  const cut = d.value_size_bytes !== null ?
    el("p", {class: "muted", id: "raw-size"}, `${d.value_size_bytes} bytes, sha256 ` +
      `${d.value_sha256}` + (d.truncated ? ": too large, only its first bytes are kept" : ""))
    : [];
  const page = [el("h1", {}, `Dead letter ${id}`), el("div", {class: "card"}, facts,
    el("h2", {}, "Raw message"), cut, el("pre", {id: "raw-message"}, raw))];
  if (d.actions.length) {
    page.push(el("div", {class: "card"}, el("h2", {}, "Actions"), el("table", {id: "actions"},
      d.actions.map((a) => el("tr", {}, el("td", {class: "when"}, when(a.at_ms)),
        el("td", {}, a.action), el("td", {}, el("span", {class: `badge ${a.status ===
          "accepted" ? "resolved" : "refused"}`}, a.status)), el("td", {}, a.operator),
        el("td", {}, a.note))))));
  }
  if (d.state === "open") page.push(deadLetterActions(d, raw));
  return page;
}

function deadLetterActions(d, raw) {
  const value = el("textarea", {id: "replay-value", rows: 6}, d.value_text || "");
  const comment = el("input", {id: "replay-comment", size: 40, placeholder: "what you fixed"});
  const reason = el("input", {id: "discard-reason", size: 40, placeholder: "why (required)"});
  const outcome = el("div", {id: "dead-letter-outcome"});
  const replayKey = newKey();
  const discardKey = newKey();
  const act = async (path, body, key) => {
    outcome.replaceChildren(message("info", "Sent: waiting for the dead-letter stage…"));
    try {
      await api("POST", `/v1/ops/deadletters/${d.dead_letter_id}/${path}`, body,
        {"Idempotency-Key": key});
      const after = await until(() => api("GET", `/v1/ops/deadletters/${d.dead_letter_id}`),
        (x) => x.state !== "open" || x.actions.length > d.actions.length);
      if (after.state !== "open") render();
      else outcome.replaceChildren(message("error", after.actions.length ?
        `Refused: ${after.actions[after.actions.length - 1].status}` : "No answer yet."));
    } catch (error) { outcome.replaceChildren(message("error", problemText(error))); }
  };
  return el("div", {class: "card", id: "dead-letter-actions"},
    el("h2", {}, d.replayable ? "Replay a corrected copy" : "Replay"),
    d.replayable ? [el("p", {class: "muted"}, `It goes back to ${d.topic} with its key, and ` +
      "takes the normal path from there."), value, el("div", {class: "row"}, comment,
      el("button", {id: "replay", onclick: () => act("replay", {value: value.value,
        operator: operator(), comment: comment.value}, replayKey)}, "Replay"))] :
      message("info", d.truncated ? "Only the first bytes of it are kept: it cannot be " +
        "replayed; discard it." : `${d.topic} takes no corrected copies: discard it.`),
    el("h2", {}, "Discard"), el("div", {class: "row"}, reason,
      el("button", {class: "danger", id: "discard", onclick: () => act("discard",
        {operator: operator(), reason: reason.value}, discardKey)}, "Discard")), outcome);
}

// ------------------------------------------------------------------ routing between pages

async function render() {
  const main = document.getElementById("main");
  if (!sessionStorage.getItem(KEY)) { showKeyGate(""); return; }
  document.getElementById("who").replaceChildren(`signed in as ${operator()}`,
    el("button", {class: "secondary", id: "sign-out", onclick: () => {
      sessionStorage.removeItem(KEY); showKeyGate("");
    }}, "Sign out"));
  startStrip();
  const [path, query] = (location.hash.replace(/^#\/?/, "") || "search").split("?");
  const [page, ...rest] = path.split("/");
  const arg = decodeURIComponent(rest.join("/"));
  const params = new URLSearchParams(query || "");
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active",
    a.dataset.page === page || (page === "payment" && a.dataset.page === "search") ||
    (page === "deadletter" && a.dataset.page === "deadletters")));
  const pages = {
    search: () => searchPage(arg), payment: () => paymentPage(arg),
    reviews: reviewsPage, exceptions: () => exceptionsPage(params),
    deadletters: () => deadLettersPage(params), deadletter: () => deadLetterPage(arg),
  };
  try {
    const content = await (pages[page] || pages.search)();
    main.replaceChildren(...[content].flat());
    main.dataset.page = page;
  } catch (error) {
    if (error instanceof Refused && (error.status === 401 || error.status === 403)) return;
    main.replaceChildren(message("error", error instanceof Refused ? problemText(error) :
      String(error), "page-error"));
  }
}

window.addEventListener("hashchange", render);
document.addEventListener("DOMContentLoaded", render);
