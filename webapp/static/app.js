// Fedora Notifications: the preferences UI (no framework, no build step).
//
// Everything that comes from the server is inserted as text (textContent,
// attribute values through setAttribute on a fixed set of names); links are
// only ever http(s).  See README.md beside this file for the structure.

const API = "/api/v1";
const ARTIFACT_TYPES = ["rpms", "containers", "modules", "flatpaks"];
const SEVERITIES = ["DEBUG", "INFO", "WARNING", "ERROR"];
const FEED_MAX_ITEMS = 100;
const PREVIEW_DELAY_MS = 250;

const TRACKING_HINTS = {
  "artifacts-owned": "Packages, containers, modules and flatpaks you own directly.",
  "artifacts-group-owned": "Artifacts owned by one of the groups you list.",
  "artifacts-followed": "The artifacts you pick, whoever owns them.",
  "related-events": "Events that name you (your builds, updates, comments...).",
  "users-followed": "Events that name one of the people you list.",
  "topics": "Messages whose topic matches one of your patterns.",
};

const ADDRESS_HINTS = {
  email: "An e-mail address; we send it a link to open and confirm.",
  irc: "Your IRC nick on Libera.Chat; we send it a code to enter here.",
  matrix: "Your Matrix ID, like @you:fedora.im; we send it a code to enter here.",
  sse: "No address needed: notifications appear in this page's live feed.",
};

const state = {
  me: null,
  destinations: [],
  rules: [],
  applications: [],
  editing: null, // the rule being edited (a working copy), or null
  switching: null, // a rule's switch in the list on its way to the server (a promise)
  feed: null,
  feedCaughtUp: false, // the feed's "live" marker came: what follows is new
  feedMissed: null, // while resuming after a dropped connection: {count, first, gap}
  previewTimer: 0,
  previewSeq: 0,
  epoch: 0, // bumped at sign-out: answers to an earlier user's requests are dropped
  notificationsSeq: 0,
  destinationsSeq: 0,
  meSeq: 0,
  removedDestinations: new Set(), // removed on this page: an open rule edit drops them
};

// -- small helpers ------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element: attrs set with setAttribute (or as properties for a few), children as text. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "checked" || key === "value" || key === "selected") el[key] = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "href") {
      const safe = safeUrl(value);
      if (safe) el.setAttribute("href", safe);
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** The URL if it is an absolute http(s) one, else null (never javascript:, data:, nor,
 * from a message, a relative one, which would become a link into this app); `relative`
 * lets the server's own addresses (the feed's) be relative to the page. */
function safeUrl(value, { relative = false } = {}) {
  if (typeof value !== "string" || (!relative && !/^https?:\/\//i.test(value))) return null;
  try {
    const url = new URL(value, location.href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

let uid = 0;
const nextId = (prefix) => `${prefix}-${++uid}`;

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    // spaces and tabs only: trim() would make "\u00a0__Host-fmn_csrf", which any
    // site under a parent domain may set, read as ours (as the server reads it)
    const [key, ...rest] = part.replace(/^[ \t]+|[ \t]+$/g, "").split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return null;
}

function announce(text) {
  const el = $("status");
  el.textContent = "";
  // A fresh text node, so the same message twice is announced twice.
  setTimeout(() => { el.textContent = text; }, 30);
}

/** The error banner: it stays until dismissed (or replaced), so no error goes unread. */
function showAlert(text) {
  const box = $("alert");
  if (!text) {
    box.replaceChildren();
    return;
  }
  const dismiss = h("button", { type: "button", class: "secondary" }, "Dismiss");
  dismiss.addEventListener("click", () => {
    box.replaceChildren();
    $("main").focus();
  });
  box.replaceChildren(h("span", {}, text), " ", dismiss);
}

/**
 * Runs `work` (async) for `control`, a form or a button, unless it is at it already, so a
 * double click sends once. Meanwhile the control is marked busy: its buttons look disabled
 * but keep the focus, and other forms stay free.
 */
async function whileBusy(control, work) {
  if (control.getAttribute("aria-busy") === "true") return;
  setBusy(control, true);
  try {
    await work();
  } finally {
    setBusy(control, false);
  }
}

function setBusy(control, busy) {
  const buttons = control instanceof HTMLButtonElement ? [control]
    : [...control.querySelectorAll('button[type="submit"]')];
  if (busy) control.setAttribute("aria-busy", "true");
  else control.removeAttribute("aria-busy");
  for (const button of buttons) {
    if (busy) button.setAttribute("aria-disabled", "true");
    else button.removeAttribute("aria-disabled");
  }
}

function formatTime(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

// -- the API --------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.error)) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
    this.field = body && typeof body.field === "string" ? body.field : null;
  }
}

/** A promise that never settles: what api() gives for an earlier user's request. */
const abandoned = () => new Promise(() => {});

/**
 * Calls the API: its JSON answer (null for none); onAnswer(response) is called on a success.
 *
 * An answer that comes after a sign-out belongs to the person who made the request, not to
 * whoever is on the page now: its promise never settles, so neither the caller's success
 * nor its error path draws it (a late 401 does not sign the next person out). Nor does
 * a 401 that signs the person out. Callers therefore need no check of their own after an
 * await of api().
 */
async function api(method, path, body, onAnswer) {
  const epoch = state.epoch;
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") {
    // over https the server names its cookies __Host-: no other site can set those
    const csrf = cookie("__Host-fmn_csrf") || cookie("fmn_csrf");
    if (csrf) headers["X-CSRF-Token"] = csrf;
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    if (epoch !== state.epoch) return abandoned();
    throw error;
  }
  let data = null;
  const type = response.headers.get("content-type") || "";
  if (response.status !== 204 && type.includes("json")) {
    data = await response.json().catch(() => null);
  }
  if (epoch !== state.epoch) return abandoned(); // signed out meanwhile
  if (response.status === 204) return null;
  if (!response.ok) {
    if (response.status === 401 && state.me) {
      // the session ended: the page is cleared for whoever signs in next, and the
      // caller's error path must not draw into it
      signedOut();
      return abandoned();
    }
    throw new ApiError(response.status, data);
  }
  if (onAnswer) onAnswer(response);
  return data;
}

// -- field errors -------------------------------------------------------------------

/** "$.rule.generation_rules[0].filters.topic" or "rule (r1) > tracking.params" -> dotted. */
function normalizeField(field) {
  return field
    .replace(/\s*\([^)]*\)/g, "")
    .replace(/\s*>\s*/g, ".")
    .replace(/\[(\d+)\]/g, ".$1")
    .replace(/^\$\.?/, "")
    .replace(/^(rule|body)\./, "")
    .replace(/^\.+|\.+$/g, "");
}

function clearErrors(form) {
  for (const el of form.querySelectorAll(".field-error")) {
    el.hidden = true;
    el.textContent = "";
  }
  for (const el of form.querySelectorAll("[aria-invalid]")) {
    el.removeAttribute("aria-invalid");
    const described = (el.getAttribute("aria-describedby") || "").split(" ")
      .filter((id) => id && !id.startsWith("err-"));
    if (described.length) el.setAttribute("aria-describedby", described.join(" "));
    else el.removeAttribute("aria-describedby");
  }
}

/** Show an API error beside the control its `field` names (else at the top of the form). */
function showError(form, formError, error, { focus = true } = {}) {
  const message = error instanceof ApiError ? error.message : `Something went wrong: ${error}`;
  let target = null;
  if (error instanceof ApiError && error.field) {
    const path = normalizeField(error.field);
    let best = -1;
    for (const el of form.querySelectorAll("[data-field]")) {
      const name = el.dataset.field;
      if ((path === name || path.startsWith(`${name}.`)) && name.length > best) {
        best = name.length;
        target = el;
      }
    }
  }
  if (target) {
    const id = `err-${target.id || nextId("f")}`;
    let box = document.getElementById(id);
    if (!box) {
      box = h("p", { class: "field-error", id });
      const anchor = target.closest(".field, fieldset") || target;
      anchor.append(box);
    }
    box.textContent = message;
    box.hidden = false;
    target.setAttribute("aria-invalid", "true");
    const described = (target.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
    if (!described.includes(id)) described.push(id);
    target.setAttribute("aria-describedby", described.join(" "));
    if (focus) target.focus();
  } else if (formError) {
    formError.textContent = message;
    formError.hidden = false;
    if (focus) showAlert(message);
  } else {
    showAlert(message);
  }
}

// -- messages and notifications -------------------------------------------------------

// Bus text breaks (made spaces) and what changes how it reads rather than what it
// says: C0/C1 controls, bidi marks, embeddings, overrides and isolates (which can make
// "gnp.exe" read as "exe.png"), the byte-order mark. The same set mail and IRC remove.
const BREAKS = /[\t\n\v\f\r\u0085\u2028\u2029]+/g;
const UNSHOWN = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff\ufffe\uffff]/g;

/** Untrusted text as one plain line of at most ``max`` characters ("" if not text). */
function plain(value, max = 1000) {
  if (typeof value !== "string") return "";
  return value.replace(BREAKS, " ").replace(UNSHOWN, "").replace(/ {2,}/g, " ").trim()
    .slice(0, max);
}

/** "type/name" of an artifact, shown: names come from the bus and Fedora's sources. */
function artifactName(a) {
  return `${plain(a.type, 64)}/${plain(a.name, 512)}`;
}

/** One message or feed event as a list item; every value inserted as text. */
function messageItem(m, { live = false } = {}) {
  const severity = SEVERITIES.includes(m.severity) ? m.severity : null;
  const summary = plain(m.summary) || plain(m.topic, 255) || "(no summary)";
  const app = plain(m.app, 255);
  const topic = plain(m.topic, 255);
  const url = safeUrl(m.url);
  const title = url
    ? h("a", { href: url, rel: "noopener noreferrer", target: "_blank" }, summary)
    : h("span", {}, summary);
  const meta = h("p", { class: "meta" },
    app ? h("span", { class: "app" }, app) : null,
    severity ? h("span", { class: `severity severity-${severity.toLowerCase()}` }, severity) : null,
    topic ? h("code", { class: "topic" }, topic) : null,
    h("time", { datetime: m.sent_at || m.received_at || "" },
      formatTime(m.sent_at || m.received_at)));
  const rules = Array.isArray(m.rule_names) && m.rule_names.length
    ? h("p", { class: "rules" }, `Rule: ${m.rule_names.join(", ")}`) : null;
  return h("li", { class: live ? "message live" : "message", "data-message-id": m.message_id || m.id || "" },
    h("p", { class: "summary" }, title), meta, rules);
}

/** Newest first, whichever order the server used: by the time received (a feed event's
 * id, "<ms>-<seq>", where received_at is unreadable), then by the feed's sequence.  One
 * key for all: live-feed events and the window's matches are mixed in one list. */
function newestFirst(a, b) {
  const key = (e) => {
    const m = /^(\d+)-(\d+)$/.exec(String(e.id || ""));
    const at = Date.parse(String(e.received_at || ""));
    return [Number.isNaN(at) ? (m ? Number(m[1]) : 0) : at, m ? Number(m[2]) : 0];
  };
  const [ka, kb] = [key(a), key(b)];
  return kb[0] - ka[0] || kb[1] - ka[1];
}

async function loadNotifications() {
  const list = $("notification-list");
  const mine = ++state.notificationsSeq;
  try {
    let complete = true;
    const answer = await api("GET", `${API}/notifications?limit=50`, undefined, (response) => {
      // false: some rule's search ran out of time, so matches may be missing
      complete = response.headers.get("FMN-Complete") !== "false";
    });
    if (mine !== state.notificationsSeq) return; // a later request has the list
    const events = [...(answer || [])];
    events.sort(newestFirst);
    list.replaceChildren(...events.map((e) => messageItem(e)));
    $("notifications-empty").hidden = list.children.length > 0;
    $("notifications-incomplete").hidden = complete;
  } catch (error) {
    if (mine !== state.notificationsSeq) return;
    list.replaceChildren();
    $("notifications-incomplete").hidden = true;
    showAlert(`Could not load recent notifications: ${error.message}`);
  }
}

// -- the Atom feed's private address (asked for, never loaded by itself) -------------------

function setupAtomFeed() {
  const show = async (method, path) => {
    try {
      const answer = await api(method, path, method === "POST" ? {} : undefined);
      const url = answer && safeUrl(answer.url, { relative: true });
      if (!url) return;
      $("atom-url").value = url;
      $("atom-row").hidden = false;
      $("atom-url").focus();
      $("atom-url").select();
    } catch (error) {
      showAlert(`Could not get your feed address: ${error.message}`);
    }
  };
  $("atom-show").addEventListener("click", () => show("GET", `${API}/atom-url`));
  const revoke = $("atom-revoke");
  revoke.addEventListener("click", () => confirmInline(revoke,
    "Every feed reader using the current address stops getting it. Make a new one?",
    () => show("POST", `${API}/atom-url/revoke`), "Yes, make a new one"));
}

// -- the live feed --------------------------------------------------------------------

function feedState(text) {
  const badge = $("feed-state");
  badge.textContent = text;
  badge.dataset.state = text;
}

function openFeed() {
  closeFeed();
  const url = state.me && safeUrl(state.me.feed_url, { relative: true });
  if (!url || typeof EventSource === "undefined") {
    feedState("unavailable");
    return;
  }
  feedState("connecting");
  // The stream first replays recent history, then sends a "live" marker: only the
  // events after it are new enough for a desktop notification.
  // After a dropped connection the browser resumes by itself from its last event: the
  // events missed meanwhile come before the next "live" marker, and are news (they
  // arrived while the page was open): a few are shown one by one, more as one summary.
  state.feedCaughtUp = false;
  state.feedMissed = null;
  const source = new EventSource(url, { withCredentials: true });
  state.feed = source;
  source.addEventListener("open", () => feedState("live"));
  source.addEventListener("error", () => {
    feedState(source.readyState === EventSource.CLOSED ? "offline" : "reconnecting");
    if (state.feedCaughtUp && source.readyState !== EventSource.CLOSED) {
      state.feedCaughtUp = false;
      state.feedMissed = { count: 0, first: [], gap: false };
    }
  });
  source.addEventListener("gap", () => {
    if (state.feedMissed) state.feedMissed.gap = true; // some were trimmed meanwhile
  });
  source.addEventListener("live", () => {
    state.feedCaughtUp = true;
    const missed = state.feedMissed;
    state.feedMissed = null;
    if (!missed || missed.count === 0) return;
    if (missed.count <= DESKTOP_MISSED_ONE_BY_ONE && !missed.gap) {
      missed.first.forEach(desktopNotify);
    } else {
      desktopSummary(missed.count, missed.gap);
    }
  });
  source.addEventListener("notification", (event) => {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!data || typeof data !== "object") return;
    const list = $("feed-list");
    list.prepend(messageItem(data, { live: true }));
    while (list.children.length > FEED_MAX_ITEMS) list.lastElementChild.remove();
    $("feed-empty").hidden = true;
    if (state.feedCaughtUp) {
      desktopNotify(data);
    } else if (state.feedMissed) {
      state.feedMissed.count += 1;
      if (state.feedMissed.first.length < DESKTOP_MISSED_ONE_BY_ONE) state.feedMissed.first.push(data);
    }
  });
}

// -- desktop notifications (opt-in, while the page is open) -------------------------------

const DESKTOP_KEY = "fmn.desktopNotifications";
// events missed during a dropped connection shown one by one; more make one summary
const DESKTOP_MISSED_ONE_BY_ONE = 3;

function desktopWanted() {
  try {
    return window.localStorage.getItem(DESKTOP_KEY) === "on";
  } catch {
    return false; // storage refused (private mode): never on by itself
  }
}

function setDesktopWanted(on) {
  try {
    if (on) window.localStorage.setItem(DESKTOP_KEY, "on");
    else window.localStorage.removeItem(DESKTOP_KEY);
  } catch {
    /* the choice then lasts for this page only */
  }
}

function setupDesktopNotifications() {
  if (typeof Notification === "undefined") return; // the row stays hidden
  const box = $("desktop-notify");
  const note = $("desktop-notify-note");
  $("desktop-notify-row").hidden = false;
  box.checked = desktopWanted() && Notification.permission === "granted";
  box.addEventListener("change", async () => {
    note.textContent = "";
    if (!box.checked) {
      setDesktopWanted(false);
      return;
    }
    let permission = Notification.permission;
    if (permission === "default") permission = await Notification.requestPermission();
    if (permission === "granted") {
      setDesktopWanted(true);
    } else {
      box.checked = false;
      setDesktopWanted(false);
      note.textContent = "The browser refused: allow notifications for this site in its settings.";
    }
  });
}

function desktopAllowed() {
  if (typeof Notification === "undefined" || Notification.permission !== "granted") return false;
  return desktopWanted() && $("desktop-notify").checked;
}

/** One desktop notification for the events missed while the connection was down. */
function desktopSummary(count, gap) {
  if (!desktopAllowed()) return;
  try {
    const shown = new Notification("Fedora Notifications", {
      body: `${count} new notifications while the connection was down` +
        (gap ? ", and some older ones are no longer in the feed" : ""),
      tag: "fmn-missed",
    });
    shown.addEventListener("click", () => window.focus());
  } catch {
    /* as below */
  }
}

/** A desktop notification for one live event; the API shows title and body as plain text. */
function desktopNotify(data) {
  if (!desktopAllowed()) return;
  const app = plain(data.app, 40) || "Fedora";
  try {
    const shown = new Notification(`[${app}] Fedora Notifications`, {
      body: plain(data.summary, 300) || plain(data.topic, 200),
      tag: typeof data.message_id === "string" && data.message_id
        ? data.message_id.slice(0, 200) : undefined,
    });
    const url = safeUrl(data.url);
    shown.addEventListener("click", () => {
      window.focus();
      if (url) window.open(url, "_blank", "noopener");
    });
  } catch {
    /* some browsers allow notifications only from a service worker: nothing to show */
  }
}

function closeFeed() {
  if (state.feed) state.feed.close();
  state.feed = null;
  feedState("offline");
}

// -- destinations ---------------------------------------------------------------------

function destinationLabel(d) {
  const kinds = { email: "E-mail", irc: "IRC", matrix: "Matrix", sse: "Live feed" };
  const kind = kinds[d.protocol] || d.protocol;
  return d.address ? `${kind}: ${d.address}` : kind;
}

async function loadDestinations() {
  const mine = ++state.destinationsSeq;
  const found = (await api("GET", `${API}/destinations`)) || [];
  if (mine !== state.destinationsSeq) return; // a later read or change of the list: this is old
  state.destinations = found;
  renderDestinations();
}

function renderDestinations() {
  const list = $("destination-list");
  list.replaceChildren(...state.destinations.map(destinationItem));
  $("destinations-empty").hidden = state.destinations.length > 0;
}

function destinationItem(d) {
  const titleId = nextId("dest");
  const li = h("li", { class: "item card", "data-destination-id": d.id, "aria-labelledby": titleId });
  const errorBox = h("p", { class: "field-error form-error", hidden: true });
  const status = d.verified
    ? h("span", { class: "badge ok" }, "verified")
    : h("span", { class: "badge warn" }, "not verified");
  li.append(h("div", { class: "item-head" },
    h("h3", { id: titleId, class: "item-title" }, destinationLabel(d)), status));
  li.append(errorBox);

  if (!d.verified && d.protocol !== "sse") {
    if (d.protocol === "email") {
      li.append(h("p", { class: "hint" }, "We sent a confirmation link to this address: open it and press its Confirm button."));
      li.append(resendButton(d, errorBox));
    } else {
      const codeId = nextId("code");
      const form = h("form", { class: "inline-form", novalidate: true });
      const input = h("input", {
        id: codeId, type: "text", inputmode: "numeric", autocomplete: "one-time-code",
        maxlength: "12", "data-field": "code",
      });
      form.append(
        h("div", { class: "field" },
          h("label", { for: codeId }, `Verification code for ${destinationLabel(d)}`), input),
        h("button", { type: "submit" }, "Verify"),
        resendButton(d, errorBox));
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        clearErrors(li);
        try {
          const updated = await api("POST", `${API}/destinations/${encodeURIComponent(d.id)}/verify`,
            { code: input.value.trim() });
          replaceDestination(updated);
          announce(`${destinationLabel(d)} verified.`);
          refreshAccountNote();
          focusDestination(d.id);
        } catch (error) {
          // A wrong code is about the code field, whatever the server names.
          showError(form, errorBox, error instanceof ApiError && error.field ? error
            : new ApiError(error.status || 400, { detail: error.message, field: "code" }));
        }
      });
      li.append(form);
    }
  }

  // Digest setting.
  const digestForm = h("form", { class: "inline-form digest", novalidate: true });
  const onId = nextId("digest-on");
  const intervalId = nextId("digest-interval");
  const countId = nextId("digest-count");
  const on = h("input", { id: onId, type: "checkbox", checked: Boolean(d.digest), "data-field": "digest" });
  const interval = h("input", {
    id: intervalId, type: "number", min: "1", step: "1", "data-field": "digest.interval_s",
    value: String(d.digest ? Math.round(d.digest.interval_s / 60) : 60),
  });
  const count = h("input", {
    id: countId, type: "number", min: "1", step: "1", "data-field": "digest.max_count",
    value: String(d.digest ? d.digest.max_count : 50),
  });
  const digestFields = h("div", { class: "digest-fields" },
    h("div", { class: "field" }, h("label", { for: intervalId }, "Send at most every (minutes)"), interval),
    h("div", { class: "field" }, h("label", { for: countId }, "or when this many wait"), count));
  const syncDigest = () => {
    interval.disabled = !on.checked;
    count.disabled = !on.checked;
  };
  on.addEventListener("change", syncDigest);
  syncDigest();
  digestForm.append(
    h("div", { class: "field" },
      h("label", { for: onId, class: "inline" }, on, " Batch into digests")),
    digestFields,
    h("button", { type: "submit", class: "secondary" }, "Save digest setting"));
  digestForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(li);
    const digest = on.checked
      ? { interval_s: Math.round(Number(interval.value) * 60), max_count: Math.round(Number(count.value)) }
      : null;
    try {
      const updated = await api("PATCH", `${API}/destinations/${encodeURIComponent(d.id)}`, { digest });
      replaceDestination(updated);
      announce(`Digest setting saved for ${destinationLabel(d)}.`);
      refreshAccountNote();
      focusDestination(d.id);
    } catch (error) {
      showError(digestForm, errorBox, error);
    }
  });
  li.append(digestForm);

  const remove = h("button", { type: "button", class: "danger" }, `Remove ${destinationLabel(d)}`);
  remove.addEventListener("click", () => confirmInline(remove, `Really remove ${destinationLabel(d)}?`,
    async () => {
      try {
        await api("DELETE", `${API}/destinations/${encodeURIComponent(d.id)}`);
        state.removedDestinations.add(d.id);
        state.destinationsSeq++; // a list read before this is old now
        state.destinations = state.destinations.filter((x) => x.id !== d.id);
        renderDestinations();
        announce(`${destinationLabel(d)} removed.`);
        refreshAccountNote();
        $("destinations-title").focus();
      } catch (error) {
        showError(li, errorBox, error);
        remove.focus();
      }
    }));
  li.append(h("div", { class: "actions" }, remove));
  return li;
}

function resendButton(d, errorBox) {
  const button = h("button", { type: "button", class: "secondary" }, "Send again");
  button.addEventListener("click", async () => {
    try {
      const answer = await api("POST",
        `${API}/destinations/${encodeURIComponent(d.id)}/resend`);
      if (answer && answer.verification === "verified") {
        announce(`${destinationLabel(d)} is verified already: nothing was sent.`);
        await loadDestinations();
        return;
      }
      announce(`A new verification message is on its way to ${destinationLabel(d)}.`);
    } catch (error) {
      errorBox.textContent = error.message;
      errorBox.hidden = false;
    }
  });
  return button;
}

function replaceDestination(updated) {
  if (!updated) return;
  state.destinationsSeq++; // a list read before this is old now
  state.destinations = state.destinations.map((x) => (x.id === updated.id ? updated : x));
  renderDestinations();
}

function focusDestination(id) {
  const li = [...$("destination-list").children].find((el) => el.dataset.destinationId === id);
  const heading = li && li.querySelector(".item-title");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

/** Replace `button` with "really?" and "cancel" buttons; run `action` on confirmation. */
function confirmInline(button, question, action, answer = "Yes, delete") {
  const box = h("span", { class: "confirm", role: "group", "aria-label": question });
  const yes = h("button", { type: "button", class: "danger" }, answer);
  const no = h("button", { type: "button", class: "secondary" }, "Cancel");
  box.append(h("span", {}, question), yes, no);
  button.hidden = true;
  button.after(box);
  no.addEventListener("click", () => {
    box.remove();
    button.hidden = false;
    button.focus();
  });
  yes.addEventListener("click", async () => {
    box.remove();
    button.hidden = false;
    await action();
  });
  yes.focus();
}

function setupDestinationForm() {
  const form = $("destination-form");
  const protocol = $("dest-protocol");
  const address = $("dest-address");
  const sync = () => {
    $("dest-address-hint").textContent = ADDRESS_HINTS[protocol.value] || "";
    $("dest-address-field").hidden = protocol.value === "sse";
    address.type = protocol.value === "email" ? "email" : "text";
  };
  protocol.addEventListener("change", sync);
  sync();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy(form, () => addDestination(form, protocol, address));
  });
}

async function addDestination(form, protocol, address) {
  // A preview still pending or in flight must not clear what saving reports.
  clearTimeout(state.previewTimer);
  state.previewSeq++;
  clearErrors(form);
  const body = { protocol: protocol.value };
  if (protocol.value !== "sse") body.address = address.value.trim();
  try {
    const created = await api("POST", `${API}/destinations`, body);
    state.destinationsSeq++; // a list read before this is old now
    state.destinations.push(created);
    renderDestinations();
    address.value = "";
    announce(`${destinationLabel(created)} added${created.verified ? "" : "; verify it to use it"}.`);
    focusDestination(created.id);
    refreshAccountNote();
  } catch (error) {
    showError(form, $("destination-form-error"), error);
  }
}

// -- rules: the list ---------------------------------------------------------------------

function trackingSummary(t) {
  const p = (t && t.params) || {};
  switch (t && t.kind) {
    case "artifacts-owned": return "Artifacts I own";
    case "artifacts-group-owned": return `Artifacts owned by ${(p.groups || []).join(", ")}`;
    case "artifacts-followed":
      return `Following ${(p.artifacts || []).map(artifactName).join(", ")}`;
    case "related-events": return "Events about me";
    case "users-followed": return `Following ${(p.usernames || []).join(", ")}`;
    case "topics": return `Topics ${(p.patterns || []).join(", ")}`;
    default: return String((t && t.kind) || "");
  }
}

async function loadRules() {
  const found = (await api("GET", `${API}/rules`)) || [];
  state.rules = found;
  renderRules();
}

function renderRules() {
  const list = $("rule-list");
  list.replaceChildren(...state.rules.map(ruleItem));
  $("rules-empty").hidden = state.rules.length > 0;
}

function ruleItem(rule) {
  const titleId = nextId("rule");
  const toggleId = nextId("rule-enabled");
  const name = rule.name || "(unnamed rule)";
  const errorBox = h("p", { class: "field-error form-error", hidden: true });
  const toggle = h("input", { id: toggleId, type: "checkbox", checked: Boolean(rule.enabled) });
  toggle.addEventListener("change", async () => {
    errorBox.hidden = true;
    // the version this switch was drawn from: if the rule changed elsewhere since,
    // the server answers 412 and changes nothing (the list is then reloaded)
    const from = rule.etag;
    try {
      const body = { enabled: toggle.checked };
      if (from) body.etag = from;
      const request = api("PATCH", `${API}/rules/${encodeURIComponent(rule.id)}`, body);
      // a save of the open editor waits for it: it takes the version this answers
      state.switching = request.then(() => {}, () => {});
      const updated = await request;
      Object.assign(rule, updated || { enabled: toggle.checked });
      if (state.editing && state.editing.id === rule.id) { // or saving it undoes the switch
        state.editing.enabled = rule.enabled;
        // this page's own change is not "elsewhere": an editor opened from the version
        // the switch changed follows it (one opened from another keeps its own)
        if (from && state.editing.etag === from) state.editing.etag = rule.etag;
        $("rule-enabled-new").checked = rule.enabled;
      }
      announce(`${name} ${rule.enabled ? "enabled" : "disabled"}.`);
      refreshAccountNote();
    } catch (error) {
      toggle.checked = !toggle.checked;
      errorBox.textContent = error.message;
      errorBox.hidden = false;
      if (error instanceof ApiError && error.status === 412) {
        // the list gets the rule as it is now; the message stays until the next change
        loadRules().then(() => {
          const item = ruleListItem(rule.id);
          const box = item && item.querySelector(".form-error");
          if (box) {
            box.textContent = error.message;
            box.hidden = false;
          }
        }).catch(() => {});
      }
    }
  });
  const edit = h("button", { type: "button", class: "secondary" }, "Edit");
  edit.setAttribute("aria-label", `Edit ${name}`);
  edit.addEventListener("click", () => openEditor(rule));
  const del = h("button", { type: "button", class: "danger" }, "Delete");
  del.setAttribute("aria-label", `Delete ${name}`);
  del.addEventListener("click", () => confirmInline(del, `Really delete ${name}?`, async () => {
    try {
      await api("DELETE", `${API}/rules/${encodeURIComponent(rule.id)}`);
      state.rules = state.rules.filter((r) => r.id !== rule.id);
      renderRules();
      if (state.editing && state.editing.id === rule.id) closeEditor();
      announce(`${name} deleted.`);
      refreshAccountNote();
      $("rules-title").focus();
    } catch (error) {
      errorBox.textContent = error.message;
      errorBox.hidden = false;
      del.focus();
    }
  }));
  const dests = new Set((rule.generation_rules || []).flatMap((g) => g.destinations || []));
  const destNames = state.destinations.filter((d) => dests.has(d.id)).map(destinationLabel);
  return h("li", { class: "item card", "data-rule-id": rule.id, "aria-labelledby": titleId },
    h("div", { class: "item-head" },
      h("h3", { id: titleId, class: "item-title", tabindex: "-1" }, name),
      h("label", { for: toggleId, class: "inline switch" }, toggle, " Enabled")),
    h("p", { class: "meta" }, trackingSummary(rule.tracking)),
    destNames.length ? h("p", { class: "meta" }, `To ${destNames.join(", ")}`) : null,
    errorBox,
    h("div", { class: "actions" }, edit, del));
}

// -- rules: the editor --------------------------------------------------------------------

function blankRule() {
  const sse = state.destinations.find((d) => d.protocol === "sse" && d.verified);
  return {
    name: "",
    enabled: true,
    tracking: { kind: "artifacts-owned", params: {} },
    generation_rules: [{ filters: {}, destinations: sse ? [sse.id] : [] }],
  };
}

function openEditor(rule) {
  const copy = structuredClone(rule || blankRule());
  if (!copy.generation_rules || !copy.generation_rules.length) {
    copy.generation_rules = [{ filters: {}, destinations: [] }];
  }
  state.editing = copy;
  const form = $("rule-form");
  clearErrors(form);
  $("rule-form-error").hidden = true;
  $("editor-title").textContent = copy.id ? `Edit rule: ${copy.name || copy.id}` : "New rule";
  $("rule-name").value = copy.name || "";
  $("rule-enabled-new").checked = copy.enabled !== false;
  $("tracking-kind").value = copy.tracking.kind;
  renderTrackingParams();
  renderGenerationRules();
  $("editor").hidden = false;
  $("new-rule").hidden = true;
  $("rule-name").focus();
  schedulePreview(0);
}

function closeEditor() {
  const wasEditing = state.editing;
  state.editing = null;
  $("editor").hidden = true;
  $("new-rule").hidden = false;
  $("preview-list").replaceChildren();
  $("preview-summary").textContent = "";
  return wasEditing;
}

function splitList(text) {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

function renderTrackingParams() {
  const rule = state.editing;
  const kind = $("tracking-kind").value;
  const old = rule.tracking;
  const params = old.kind === kind ? old.params || {} : {};
  rule.tracking = { kind, params: {} };
  $("tracking-kind-hint").textContent = TRACKING_HINTS[kind] || "";
  const box = $("tracking-params");
  box.replaceChildren();

  const listField = (key, label, hint, lines = false) => {
    const id = `tracking-${key}`;
    const hintId = `${id}-hint`;
    rule.tracking.params[key] = [...(params[key] || [])];
    const input = lines
      ? h("textarea", { id, rows: "3", "data-field": `tracking.params.${key}`, "aria-describedby": hintId })
      : h("input", { id, type: "text", autocomplete: "off", "data-field": `tracking.params.${key}`,
        "aria-describedby": hintId });
    input.value = rule.tracking.params[key].join(lines ? "\n" : ", ");
    input.addEventListener("input", () => {
      rule.tracking.params[key] = lines
        ? input.value.split("\n").map((s) => s.trim()).filter(Boolean)
        : splitList(input.value);
      schedulePreview();
    });
    box.append(h("div", { class: "field" }, h("label", { for: id }, label), input,
      h("p", { class: "hint", id: hintId }, hint)));
  };

  if (kind === "artifacts-group-owned") {
    listField("groups", "Groups", "Group names, separated by commas or spaces.");
  } else if (kind === "users-followed") {
    listField("usernames", "Usernames", "Fedora account names, separated by commas or spaces.");
  } else if (kind === "topics") {
    listField("patterns", "Topic patterns",
      "One glob per line, like org.fedoraproject.prod.bodhi.update.*");
  } else if (kind === "artifacts-followed") {
    rule.tracking.params.artifacts = (params.artifacts || []).map((a) => ({ type: a.type, name: a.name }));
    box.append(artifactPicker(rule.tracking.params.artifacts));
  }
  if (kind === "artifacts-owned" || kind === "artifacts-group-owned") {
    box.append(ownershipPanel(kind));
  }
}

// What the person owns, directly and through each group, and how fresh that is.
const OWNED_SHOWN = 40;

function ownedList(artifacts) {
  const shown = artifacts.slice(0, OWNED_SHOWN).map(artifactName).join(", ");
  const more = artifacts.length > OWNED_SHOWN ? ` and ${artifacts.length - OWNED_SHOWN} more` : "";
  return artifacts.length ? shown + more : "nothing";
}

function ownershipPanel(kind) {
  const panel = h("section", { class: "ownership", id: "ownership-panel", "aria-live": "polite" },
    h("p", { class: "hint" }, "Loading what you own..."));
  api("GET", `${API}/ownership`).then((o) => {
    if (!o) return;
    const when = (t) => (t ? new Date(t).toLocaleString() : "never");
    const rows = [
      h("h4", {}, "What you own"),
      h("p", { id: "owned-direct" }, `Directly (${o.direct.length}): ${ownedList(o.direct)}`),
    ];
    for (const g of o.groups) {
      rows.push(h("p", { class: "owned-group", "data-group": g.name },
        `Through ${plain(g.name, 512)} (${g.artifacts.length}): ${ownedList(g.artifacts)}`));
    }
    if (kind === "artifacts-owned" && o.groups.length) {
      rows.push(h("p", { class: "hint" },
        "Artifacts of your groups need an \u201cArtifacts owned by groups\u201d rule naming the group."));
    }
    rows.push(h("p", { class: "hint", id: "ownership-refreshed" },
      `Ownership data from dist-git and FAS refreshed ${when(o.refreshed.reconcile)}; ` +
      `last live update from the bus ${when(o.refreshed.live)}.`));
    panel.replaceChildren(...rows);
  }).catch(() => {
    panel.replaceChildren(h("p", { class: "hint" }, "What you own could not be loaded."));
  });
  return panel;
}

function artifactPicker(chosen) {
  const wrap = h("div", { class: "artifact-picker", "data-field": "tracking.params.artifacts", tabindex: "-1" });
  const typeSel = h("select", { id: "artifact-type" },
    ARTIFACT_TYPES.map((t) => h("option", { value: t }, t)));
  const search = h("input", {
    id: "artifact-search", type: "search", autocomplete: "off",
    "aria-describedby": "artifact-search-hint", "aria-controls": "artifact-results",
  });
  const results = h("ul", { id: "artifact-results", class: "choices", "aria-label": "Matching artifacts" });
  const chosenList = h("ul", { id: "artifact-chosen", class: "chips", "aria-label": "Followed artifacts" });

  const renderChosen = () => {
    chosenList.replaceChildren(...chosen.map((a, i) => {
      const remove = h("button", { type: "button", class: "chip-remove" }, "Remove");
      remove.setAttribute("aria-label", `Stop following ${artifactName(a)}`);
      remove.addEventListener("click", () => {
        chosen.splice(i, 1);
        renderChosen();
        schedulePreview();
        search.focus();
      });
      return h("li", { class: "chip" }, h("span", {}, artifactName(a)), remove);
    }));
    if (!chosen.length) chosenList.append(h("li", { class: "empty" }, "None yet."));
  };

  let timer = 0;
  let seq = 0;
  const lookup = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const q = search.value.trim();
      const mine = ++seq;
      if (!q) {
        results.replaceChildren();
        return;
      }
      try {
        const params = new URLSearchParams({ q, type: typeSel.value, limit: "20" });
        const found = (await api("GET", `${API}/artifacts?${params}`)) || [];
        if (mine !== seq) return;
        results.replaceChildren(...found.map((a) => {
          const add = h("button", { type: "button", class: "choice" }, artifactName(a));
          add.setAttribute("aria-label", `Follow ${artifactName(a)}`);
          add.addEventListener("click", () => {
            if (!chosen.some((c) => c.type === a.type && c.name === a.name)) {
              chosen.push({ type: a.type, name: a.name });
            }
            renderChosen();
            schedulePreview();
            announce(`Following ${artifactName(a)}.`);
            search.focus();
          });
          return h("li", {}, add);
        }));
        if (!found.length) results.append(h("li", { class: "empty" }, "No match."));
      } catch (error) {
        results.replaceChildren(h("li", { class: "field-error" }, error.message));
      }
    }, 200);
  };
  search.addEventListener("input", lookup);
  typeSel.addEventListener("change", lookup);
  search.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown") {
      const first = results.querySelector("button");
      if (first) {
        event.preventDefault();
        first.focus();
      }
    } else if (event.key === "Enter") {
      event.preventDefault(); // do not submit the rule form
      const first = results.querySelector("button");
      if (first) first.click();
    }
  });
  results.addEventListener("keydown", (event) => {
    const buttons = [...results.querySelectorAll("button")];
    const i = buttons.indexOf(document.activeElement);
    if (i < 0) return;
    if (event.key === "ArrowDown" && i + 1 < buttons.length) {
      event.preventDefault();
      buttons[i + 1].focus();
    } else if (event.key === "ArrowUp") {
      event.preventDefault();
      (i > 0 ? buttons[i - 1] : search).focus();
    }
  });
  renderChosen();
  wrap.append(
    h("div", { class: "field-row" },
      h("div", { class: "field" }, h("label", { for: "artifact-type" }, "Artifact type"), typeSel),
      h("div", { class: "field grow" }, h("label", { for: "artifact-search" }, "Find an artifact"), search)),
    h("p", { class: "hint", id: "artifact-search-hint" },
      "Type part of a name, then pick from the list (arrow keys or Tab)."),
    results,
    h("h4", {}, "Followed"),
    chosenList);
  return wrap;
}

function renderGenerationRules() {
  const box = $("generation-rules");
  const gens = state.editing.generation_rules;
  // a destination removed here meanwhile is no longer offered: nor is it kept, unseen
  // (only those: a list that failed to load must not empty the rule's destinations)
  for (const g of gens) {
    g.destinations = (g.destinations || []).filter((id) => !state.removedDestinations.has(id));
  }
  box.replaceChildren(...gens.map((g, i) => generationFieldset(g, i, gens.length)));
}

function generationFieldset(gen, index, total) {
  const base = `generation_rules.${index}`;
  const f = gen.filters || (gen.filters = {});
  const fs = h("fieldset", { class: "generation", "data-field": base });
  fs.append(h("legend", {}, total > 1 ? `Delivery ${index + 1}: filters and destinations`
    : "Filters and destinations"));

  // Applications: a filterable checkbox list.
  const appsId = nextId("apps");
  const appsFilterId = nextId("apps-filter");
  const chosenApps = new Set(f.applications || []);
  const appsList = h("div", { class: "checklist", role: "group", "aria-labelledby": appsId,
    "data-field": `${base}.filters.applications`, tabindex: "-1" });
  const apps = [...new Set([...state.applications, ...chosenApps])];
  for (const app of apps) {
    const id = nextId("app");
    const box = h("input", { id, type: "checkbox", value: app, checked: chosenApps.has(app) });
    box.addEventListener("change", () => {
      if (box.checked) chosenApps.add(app);
      else chosenApps.delete(app);
      if (chosenApps.size) f.applications = apps.filter((a) => chosenApps.has(a));
      else delete f.applications;
      schedulePreview();
    });
    appsList.append(h("label", { for: id, class: "inline", "data-app": app }, box, ` ${app}`));
  }
  const appsFilter = h("input", { id: appsFilterId, type: "search", autocomplete: "off" });
  appsFilter.addEventListener("input", () => {
    const q = appsFilter.value.trim().toLowerCase();
    for (const label of appsList.children) {
      label.hidden = Boolean(q) && !label.dataset.app.toLowerCase().includes(q);
    }
  });
  fs.append(h("div", { class: "field" },
    h("p", { class: "label", id: appsId }, "Applications (none checked: all)"),
    h("label", { for: appsFilterId, class: "sub" }, "Filter the applications list"), appsFilter,
    appsList));

  // Severities.
  const sevId = nextId("sev");
  const sevs = h("div", { class: "checkrow", role: "group", "aria-labelledby": sevId,
    "data-field": `${base}.filters.severities`, tabindex: "-1" });
  const chosenSev = new Set(f.severities || []);
  for (const s of SEVERITIES) {
    const id = nextId("sev");
    const box = h("input", { id, type: "checkbox", value: s, checked: chosenSev.has(s) });
    box.addEventListener("change", () => {
      if (box.checked) chosenSev.add(s);
      else chosenSev.delete(s);
      if (chosenSev.size) f.severities = SEVERITIES.filter((x) => chosenSev.has(x));
      else delete f.severities;
      schedulePreview();
    });
    sevs.append(h("label", { for: id, class: "inline" }, box, ` ${s}`));
  }
  fs.append(h("div", { class: "field" },
    h("p", { class: "label", id: sevId }, "Severities (none checked: all but DEBUG)"), sevs));

  // Topic glob.
  const topicId = nextId("topic");
  const topicHint = nextId("topic-hint");
  const topic = h("input", { id: topicId, type: "text", autocomplete: "off",
    "data-field": `${base}.filters.topic`, "aria-describedby": topicHint, value: f.topic || "" });
  topic.addEventListener("input", () => {
    if (topic.value.trim()) f.topic = topic.value.trim();
    else delete f.topic;
    schedulePreview();
  });
  fs.append(h("div", { class: "field" }, h("label", { for: topicId }, "Topic pattern"), topic,
    h("p", { class: "hint", id: topicHint }, "Optional glob, like *.bodhi.update.comment")));

  // My actions.
  const mineId = nextId("mine");
  const mine = h("input", { id: mineId, type: "checkbox", checked: f.my_actions === true,
    "data-field": `${base}.filters.my_actions` });
  mine.addEventListener("change", () => {
    if (mine.checked) f.my_actions = true;
    else delete f.my_actions;
    schedulePreview();
  });
  fs.append(h("div", { class: "field" },
    h("label", { for: mineId, class: "inline" }, mine, " Include my own actions")));

  // Destinations.
  const destId = nextId("dests");
  const dests = h("div", { class: "checklist short", role: "group", "aria-labelledby": destId,
    "data-field": `${base}.destinations`, tabindex: "-1" });
  const chosenDest = new Set(gen.destinations || []);
  for (const d of state.destinations) {
    const id = nextId("dest");
    const box = h("input", { id, type: "checkbox", value: d.id, checked: chosenDest.has(d.id) });
    box.addEventListener("change", () => {
      if (box.checked) chosenDest.add(d.id);
      else chosenDest.delete(d.id);
      gen.destinations = state.destinations.map((x) => x.id).filter((x) => chosenDest.has(x));
      schedulePreview();
    });
    dests.append(h("label", { for: id, class: "inline" }, box,
      ` ${destinationLabel(d)}${d.verified ? "" : " (not verified)"}`));
  }
  if (!state.destinations.length) {
    dests.append(h("p", { class: "hint" }, "Add a destination first (Destinations)."));
  }
  fs.append(h("div", { class: "field" }, h("p", { class: "label", id: destId }, "Send to"), dests));

  if (total > 1) {
    const remove = h("button", { type: "button", class: "secondary" }, `Remove delivery ${index + 1}`);
    remove.addEventListener("click", () => {
      state.editing.generation_rules.splice(index, 1);
      renderGenerationRules();
      schedulePreview();
      $("add-generation").focus();
    });
    fs.append(remove);
  }
  return fs;
}

/** The editor's rule as the API wants it (no id). */
function editedRule() {
  const r = state.editing;
  return {
    name: $("rule-name").value.trim(),
    enabled: $("rule-enabled-new").checked,
    tracking: structuredClone(r.tracking),
    generation_rules: structuredClone(r.generation_rules),
  };
}

function schedulePreview(delay = PREVIEW_DELAY_MS) {
  clearTimeout(state.previewTimer);
  state.previewTimer = setTimeout(runPreview, delay);
}

async function runPreview() {
  if (!state.editing) return;
  const mine = ++state.previewSeq;
  const form = $("rule-form");
  const summary = $("preview-summary");
  summary.dataset.state = "loading";
  try {
    const answer = await api("POST", `${API}/preview`, { rule: editedRule(), limit: 50 });
    if (mine !== state.previewSeq || !state.editing) return;
    clearErrors(form);
    $("rule-form-error").hidden = true;
    const messages = (answer && answer.messages) || [];
    if (answer && answer.available === false) {
      summary.textContent = "The preview is not available on this server.";
    } else {
      summary.textContent = `${answer.matched} of the last ${answer.window} messages match`
        + (typeof answer.took_ms === "number" ? ` (${answer.took_ms.toFixed(1)} ms)` : "")
        + (answer.complete === false
          ? ", among the newest: the search stopped at its time limit, there may be more."
          : ".");
    }
    $("preview-list").replaceChildren(...messages.map((m) => messageItem(m)));
    summary.dataset.state = "done";
  } catch (error) {
    if (mine !== state.previewSeq) return;
    clearErrors(form);
    summary.textContent = "No preview: the rule is not complete yet.";
    $("preview-list").replaceChildren();
    showError(form, null, error, { focus: false });
    summary.dataset.state = "error";
  }
}

function setupEditor() {
  const form = $("rule-form");
  $("new-rule").addEventListener("click", () => openEditor(null));
  $("cancel-rule").addEventListener("click", () => {
    const was = closeEditor();
    const item = was && was.id && ruleHeading(was.id);
    (item || $("new-rule")).focus();
  });
  $("tracking-kind").addEventListener("change", () => {
    renderTrackingParams();
    schedulePreview();
  });
  $("rule-name").addEventListener("input", () => schedulePreview());
  $("rule-enabled-new").addEventListener("change", () => schedulePreview());
  $("add-generation").addEventListener("click", () => {
    state.editing.generation_rules.push({ filters: {}, destinations: [] });
    renderGenerationRules();
    schedulePreview();
    const last = $("generation-rules").lastElementChild;
    const first = last && last.querySelector("input");
    if (first) first.focus();
  });
  form.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    const field = event.target;
    if (field instanceof HTMLInputElement && field.type === "search" && field.value) return;
    $("cancel-rule").click();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy(form, () => saveRule(form));
  });
}

async function saveRule(form) {
  // A preview still pending or in flight must not clear what saving reports.
  clearTimeout(state.previewTimer);
  state.previewSeq++;
  clearErrors(form);
  $("rule-form-error").hidden = true;
  if (state.switching) await state.switching; // a switch in the list still on its way
  if (!state.editing) return;
  const body = editedRule();
  const id = state.editing.id;
  // the version the editor opened: a change made meanwhile elsewhere (another tab, a
  // phone) is not silently undone; the server answers 412 and saves nothing
  if (id && state.editing.etag) body.etag = state.editing.etag;
  try {
    const saved = id
      ? await api("PUT", `${API}/rules/${encodeURIComponent(id)}`, body)
      : await api("POST", `${API}/rules`, body);
    if (id) state.rules = state.rules.map((r) => (r.id === id ? saved : r));
    else state.rules.push(saved);
    closeEditor();
    renderRules();
    announce(`Rule ${saved.name || ""} saved.`);
    const heading = ruleHeading(saved.id);
    if (heading) heading.focus();
    refreshAccountNote();
  } catch (error) {
    showError(form, $("rule-form-error"), error);
    // changed elsewhere: the list gets the rule as it is now, so opening it again
    // shows that change (and its version), instead of failing the same way
    if (error instanceof ApiError && error.status === 412) {
      loadRules().catch(() => {});
    }
  }
}

/** The rule list's item of rule ``id`` (or undefined). */
function ruleListItem(id) {
  return [...$("rule-list").children].find((el) => el.dataset.ruleId === id);
}

function ruleHeading(id) {
  const li = ruleListItem(id);
  return li ? li.querySelector(".item-title") : null;
}

// -- views and sign in ----------------------------------------------------------------------

const VIEWS = ["rules", "destinations", "notifications"];

function showView(name, { focus = true } = {}) {
  for (const section of document.querySelectorAll("main > .view")) section.hidden = true;
  const view = $(`view-${name}`);
  view.hidden = false;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (name === "notifications") loadNotifications();
  if (name === "destinations") {
    loadDestinations().catch((error) => showAlert(`Could not load your destinations: ${error.message}`));
  }
  if (name === "rules" && state.editing) renderGenerationRules(); // destinations may have changed
  if (focus) {
    const heading = view.querySelector("h2");
    if (heading) heading.focus();
  }
  document.title = `${view.querySelector("h2").textContent} - Fedora Notifications`;
}

function route({ focus = true } = {}) {
  if (!state.me) return;
  const name = location.hash.replace(/^#\/?/, "");
  // #/rules/<id>: the rule a mail's "why you got this" names
  const ruleLink = /^rules\/(.+)$/.exec(name);
  if (ruleLink) {
    let id = ruleLink[1];
    try { id = decodeURIComponent(id); } catch { /* left as it is */ }
    showView("rules", { focus });
    for (const li of $("rule-list").children) li.removeAttribute("aria-current");
    const heading = ruleHeading(id);
    if (heading) {
      heading.closest("li").setAttribute("aria-current", "true");
      heading.scrollIntoView({ block: "center" });
      if (focus) heading.focus();
    } else {
      announce("That rule no longer exists.");
    }
    return;
  }
  showView(VIEWS.includes(name) ? name : "rules", { focus });
}

async function showSignIn() {
  $("nav").hidden = true;
  $("account").hidden = true;
  $("feed").hidden = true;
  for (const section of document.querySelectorAll("main > .view")) section.hidden = true;
  $("view-signin").hidden = false;
  document.title = "Sign in - Fedora Notifications";
  try {
    // Also sets the fmn_csrf cookie the sign-in POST must echo.
    const response = await fetch("/dev/login", {
      headers: { Accept: "application/json" }, credentials: "same-origin",
    });
    if (!response.ok) return; // no development login here
    let users = [];
    if ((response.headers.get("content-type") || "").includes("json")) {
      const data = await response.json();
      users = Array.isArray(data) ? data : (data && data.users) || [];
    } else {
      // The server's own HTML sign-in page: read the names of its datalist (parsed inert).
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      users = [...doc.querySelectorAll("datalist option")].map((o) => o.value || o.textContent);
    }
    const names = users.map((u) => (typeof u === "string" ? u : u && (u.name || u.user)))
      .filter((n) => typeof n === "string" && n);
    $("dev-users").replaceChildren(...names.map((n) => h("option", { value: n })));
    const input = $("dev-user");
    if (!input.value && names.length) input.value = names[0];
    $("dev-login").hidden = false;
  } catch {
    // no development login here
  }
}

function setupSignIn() {
  $("dev-login").addEventListener("submit", async (event) => {
    event.preventDefault();
    const err = $("dev-user-error");
    err.hidden = true;
    try {
      await api("POST", "/dev/login", { user: $("dev-user").value.trim() });
      await start();
    } catch (error) {
      err.textContent = error.message;
      err.hidden = false;
      $("dev-user").focus();
    }
  });
  $("sign-out").addEventListener("click", async () => {
    try {
      await api("POST", "/logout");
    } catch (error) {
      // (a 401, the session had ended, never comes here: api() has signed out)
      showAlert(`Could not sign out: ${error.message}. You are still signed in; try again.`);
      return;
    }
    signedOut();
  });
}

function signedOut() {
  state.me = null;
  state.epoch += 1;
  // an earlier user's request never settles (api()): it must not keep a form busy
  for (const el of document.querySelectorAll('[aria-busy="true"]')) setBusy(el, false);
  state.removedDestinations = new Set();
  clearErrors($("destination-form"));
  $("destination-form-error").hidden = true;
  $("dest-address").value = "";
  closeFeed();
  closeEditor();
  // nothing of this user stays for the next one on this page (the feed address reads
  // their notifications without a session)
  state.destinations = [];
  state.rules = [];
  for (const id of ["feed-list", "notification-list", "rule-list", "destination-list"]) {
    $(id).replaceChildren();
  }
  $("feed-empty").hidden = false;
  $("notifications-incomplete").hidden = true;
  $("atom-url").value = "";
  $("atom-row").hidden = true;
  $("account-note").hidden = true;
  showAlert("");
  $("status").textContent = "";
  showSignIn().then(() => $("main").focus());
}

/** What the page says of the account as a whole: turned off, or a change not yet in force. */
function showAccountNote() {
  const notes = [];
  if (state.me.enabled === false) {
    notes.push("An administrator has turned your notifications off: nothing is sent to you "
      + "until they are turned on again.");
  }
  if (state.me.account_blocked === true) {
    notes.push("Your Fedora account is locked or deleted: nothing is sent to you while it "
      + "is (your settings are kept).");
  }
  if (state.me.publish_pending) {
    notes.push("Your last change is saved but not yet in force: it will be within minutes.");
  }
  $("account-note").textContent = notes.join(" ");
  $("account-note").hidden = notes.length === 0;
}

/** Whether an answer to /me is an account: an object (not a list) with a name. */
function isAccount(me) {
  return !!me && typeof me === "object" && !Array.isArray(me) && typeof me.name === "string";
}

/** After a change: is it in force yet? A failed read leaves the note as it was. */
async function refreshAccountNote() {
  const mine = ++state.meSeq;
  try {
    const me = await api("GET", `${API}/me`);
    // an earlier change's answer, late, must not undo a later one's
    if (mine !== state.meSeq || !isAccount(me)) return;
    state.me = me;
    showAccountNote();
  } catch {
    // not worth a banner over a change that was saved
  }
}

async function start() {
  try {
    const me = await api("GET", `${API}/me`);
    if (!isAccount(me)) throw new Error("the server did not say who you are");
    state.me = me;
  } catch (error) {
    if (error.status === 401) {
      state.me = null;
      await showSignIn();
      return;
    }
    showAlert(`Cannot reach the server: ${error.message}`);
    return;
  }
  showAlert("");
  showAccountNote();
  $("account-name").textContent = state.me.name;
  $("account").hidden = false;
  $("nav").hidden = false;
  $("feed").hidden = false;
  $("view-signin").hidden = true;
  try {
    const [apps] = await Promise.all([api("GET", `${API}/applications`), loadDestinations()]);
    state.applications = Array.isArray(apps) ? apps : [];
    await loadRules();
  } catch (error) {
    showAlert(`Could not load your preferences: ${error.message}`);
  }
  openFeed();
  route({ focus: false });
  $("main").focus();
  document.body.dataset.ready = "true";
}

setupSignIn();
setupDestinationForm();
setupEditor();
setupDesktopNotifications();
setupAtomFeed();
$("refresh-notifications").addEventListener("click",
  () => whileBusy($("refresh-notifications"), loadNotifications));
window.addEventListener("hashchange", () => route());
// the skip link moves the focus, not the view (as a hash, #main would be a route)
document.querySelector(".skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  $("main").focus();
});
start();
