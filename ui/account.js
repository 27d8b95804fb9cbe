// The Account panel: the accounts signed in on this computer and the switch
// between them, the account's signed-in devices (online only), this
// device's name, and the password. Destructive actions ask first: the
// first click arms the button, a second one within a few seconds acts.

import { api, sentence } from "./ipc.js";
import { formatDate, hostOf } from "./format.js";

const $ = (id) => document.getElementById(id);
const CONFIRM_MS = 5000;
const DEVICE_HINT = "Shown in your list of devices from the next sign-in.";

/** What the app lends the panel: the status, leaving the panel, getting
 *  the editor out of the way before another account shows, showing a
 *  status, and the sign-in form for another account. */
let app = null;
/** The online flag the device list was last loaded for. */
let loadedOnline = null;
/** The armed button and its timer (one at a time). */
let armed = null;

export function initAccount(hooks) {
  app = hooks;
  $("account-close").addEventListener("click", () => app.leave());
  $("account-add").addEventListener("click", () => app.addAccount());
  $("sessions-revoke-others").addEventListener("click", revokeOthers);
  $("device-form").addEventListener("submit", saveDeviceName);
  $("device-name").addEventListener("change", saveDeviceName);
  $("password-form").addEventListener("submit", changePassword);
}

/** Shows the panel (the caller has hidden the rest). */
export async function openAccount() {
  disarm();
  document.querySelector("#account-view .account-body").scrollTop = 0;
  $("account-message").textContent = "";
  $("device-message").textContent = DEVICE_HINT;
  $("password-result").hidden = true;
  loadedOnline = null;
  renderAccount(app.status());
  try {
    $("device-name").value = await api.deviceName();
  } catch (err) {
    $("device-message").textContent = sentence(err);
  }
  $("account-close").focus();
}

/** Follows the status while the panel is open. */
export function renderAccount(st) {
  const who = st.user ? `${st.user.username} on ${hostOf(st.server)}` : "";
  $("account-who").textContent = who;
  renderAccounts(st);
  if (st.online !== loadedOnline) {
    loadedOnline = st.online;
    loadSessions();
  }
}

// ---- accounts on this computer ------------------------------------------

function renderAccounts(st) {
  const items = (st.accounts || []).map((a) => {
    const li = document.createElement("li");
    li.setAttribute("data-testid", "account-item");
    li.dataset.active = String(a.active);
    const text = document.createElement("div");
    text.className = "grow";
    const name = document.createElement("b");
    name.textContent = a.username;
    const where = document.createElement("div");
    where.className = "meta";
    where.textContent = hostOf(a.server);
    text.append(name, where);
    li.append(text);
    if (a.active) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "Active";
      li.append(tag);
    } else {
      const b = document.createElement("button");
      b.setAttribute("data-testid", "account-switch");
      b.className = "ghost";
      b.textContent = "Switch";
      b.title = `Show ${a.username}'s notes`;
      b.addEventListener("click", () => switchTo(a, b));
      li.append(b);
    }
    return li;
  });
  $("account-list").replaceChildren(...items);
}

async function switchTo(account, button) {
  button.disabled = true;
  $("account-message").textContent = "";
  try {
    if (!(await app.beforeSwitch())) return;
    app.render(await api.switchAccount(account.server, account.username));
    $("account-message").textContent = `Now showing ${account.username}'s notes.`;
  } catch (err) {
    $("account-message").textContent = sentence(err);
  } finally {
    button.disabled = false;
  }
}

// ---- signed-in devices ----------------------------------------------------

async function loadSessions() {
  const st = app.status();
  const message = $("sessions-message");
  if (!st.online) {
    $("session-list").replaceChildren();
    $("sessions-revoke-others").hidden = true;
    message.textContent = st.work_offline
      ? "Work offline is on. The list of your devices comes from the server: turn Work offline off to see it."
      : "Latchkey is offline now. The list of your devices comes from the server, so it shows once the server can be reached.";
    return;
  }
  let sessions;
  try {
    sessions = await api.listSessions();
  } catch (err) {
    message.textContent = sentence(err);
    return;
  }
  renderSessions(sessions);
}

function renderSessions(sessions) {
  const others = sessions.filter((s) => !s.current).length;
  $("sessions-message").textContent = others
    ? `Signed in on ${sessions.length} devices.`
    : "Only this device is signed in.";
  const items = sessions.map((s) => {
    const li = document.createElement("li");
    li.setAttribute("data-testid", "session-item");
    li.dataset.current = String(s.current);
    const text = document.createElement("div");
    text.className = "grow";
    const name = document.createElement("b");
    name.textContent = s.device_name || "Unnamed device";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `Signed in ${formatDate(s.created_at)} · last seen ${formatDate(s.last_seen_at)}`;
    text.append(name, meta);
    li.append(text);
    if (s.current) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "This device";
      li.append(tag);
    } else {
      const b = document.createElement("button");
      b.setAttribute("data-testid", "session-revoke");
      b.className = "ghost danger";
      b.textContent = "Sign out";
      b.addEventListener("click", () => revokeOne(s, b));
      li.append(b);
    }
    return li;
  });
  $("session-list").replaceChildren(...items);
  const all = $("sessions-revoke-others");
  all.hidden = others === 0;
  all.dataset.count = String(others);
  if (armed?.button !== all) all.textContent = "Sign out all other devices";
}

/** The first click asks (the button says what will happen); true when
 *  this click is the second, which acts. */
function confirmed(button, question) {
  if (armed && armed.button === button) {
    disarm();
    return true;
  }
  disarm();
  armed = { button, label: button.textContent, timer: setTimeout(disarm, CONFIRM_MS) };
  button.textContent = question;
  button.classList.add("armed");
  return false;
}

function disarm() {
  if (!armed) return;
  clearTimeout(armed.timer);
  armed.button.textContent = armed.label;
  armed.button.classList.remove("armed");
  armed = null;
}

async function revokeOne(session, button) {
  const name = session.device_name || "this device";
  if (!confirmed(button, `Sign out ${name}? Click again`)) return;
  button.disabled = true;
  try {
    await api.revokeSession(session.session_id);
    await loadSessions();
    $("sessions-message").textContent = `${name} is signed out. It keeps its unsynced changes until it signs in again.`;
  } catch (err) {
    button.disabled = false;
    $("sessions-message").textContent = sentence(err);
    if (err && err.code === "session_not_found") loadSessions();
  }
}

async function revokeOthers() {
  const button = $("sessions-revoke-others");
  const n = Number(button.dataset.count || 0);
  if (!confirmed(button, `Sign out ${n === 1 ? "1 other device" : `${n} other devices`}? Click again`)) return;
  button.disabled = true;
  try {
    const count = await api.revokeOtherSessions();
    await loadSessions();
    $("sessions-message").textContent = `Signed out ${count === 1 ? "1 other device" : `${count} other devices`}. This one stays signed in.`;
  } catch (err) {
    $("sessions-message").textContent = sentence(err);
  } finally {
    button.disabled = false;
  }
}

// ---- this device ----------------------------------------------------------

async function saveDeviceName(ev) {
  ev.preventDefault();
  const input = $("device-name");
  try {
    // Blank: the host name again, shown as the placeholder. The field is
    // never rewritten, so what is typed meanwhile stays.
    const name = await api.setDeviceName(input.value);
    input.placeholder = name;
    $("device-message").textContent = `Saved. This device signs in as “${name}” from the next sign-in.`;
  } catch (err) {
    $("device-message").textContent = sentence(err);
  }
}

// ---- password --------------------------------------------------------------

function passwordResult(text, ok) {
  const p = $("password-result");
  p.textContent = text;
  p.className = ok ? "ok" : "bad";
  p.hidden = !text;
}

async function changePassword(ev) {
  ev.preventDefault();
  const current = $("password-current").value;
  const next = $("password-new").value;
  const confirm = $("password-confirm").value;
  if (!current) return passwordResult("Enter your current password.", false);
  if (next.length < 8) return passwordResult("The new password must be at least 8 characters long.", false);
  if (next !== confirm) return passwordResult("The new password and its confirmation differ. Type them again.", false);
  const button = $("password-submit");
  button.disabled = true;
  passwordResult("", true);
  try {
    const count = await api.changePassword(current, next);
    for (const id of ["password-current", "password-new", "password-confirm"]) $(id).value = "";
    const others = count === 1 ? "1 other device was" : `${count} other devices were`;
    passwordResult(`Password changed. ${others} signed out; this one stays signed in.`, true);
    loadSessions();
  } catch (err) {
    passwordResult(sentence(err), false);
    if (err && err.code === "wrong_password") $("password-current").select();
  } finally {
    button.disabled = false;
  }
}
