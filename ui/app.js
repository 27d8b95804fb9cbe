import { api, onEvent, onStatus, onClose, sentence } from "./ipc.js";
import { formatDate, formatTime, hostOf } from "./format.js";
import { initAccount, openAccount, renderAccount } from "./account.js";

const $ = (id) => document.getElementById(id);
const SAVE_DELAY_MS = 400;
/** Results as you type: a search runs this long after the last key. */
const SEARCH_DELAY_MS = 80;
/** The engine lists at most this many search results (SEARCH_LIMIT). */
const SEARCH_LIMIT = 500;

let status = null;
let notes = [];
/** The note in the editor: {id|null, version|null, title, body, conflictOf,
 *  dirty}. `version` is the note's version the text started from: a save on
 *  a version that changed meanwhile is kept as a conflict copy. */
let draft = null;
let saveTimer = null;
let saveChain = Promise.resolve();
/** Drafts whose save is queued or running (not shown any more, maybe). */
const saving = new Set();
/** Drafts no longer shown whose save failed: tried again with the next save. */
const unsaved = new Set();
let listKey = "";
/** What the search box holds: while not blank, the list shows its hits. */
let searchQuery = "";
let searchTimer = null;
/** "notes" (list and editor), "trash" or "account". */
let view = "notes";
/** The sign-in form is open for another account, the active one staying. */
let adding = false;
/** A sentence for the banner from the app itself (a failed action, a
 *  conflict copy): shown for a while, whatever status updates come. */
let notice = null;
const NOTICE_MS = 15000;

// ---- screens -------------------------------------------------------------

function showScreen(name) {
  $("signin").hidden = name !== "signin";
  $("app").hidden = name !== "app";
}

const SIGNED_IN = ["online", "offline", "locked"];

/** Which account a status shows, if any. */
function accountOf(st) {
  return st && st.user && SIGNED_IN.includes(st.state) ? `${st.server}|${st.user.id}` : null;
}

function render(st) {
  const prev = status;
  status = st;
  const signedIn = SIGNED_IN.includes(st.state);
  if (!signedIn || adding) {
    renderSignin(st, prev);
    return;
  }
  showScreen("app");
  if (accountOf(prev) && accountOf(prev) !== accountOf(st)) accountChanged();
  renderStatusBar(st);
  const locked = st.state === "locked";
  $("locked-banner").hidden = !locked;
  $("locked-banner").textContent = locked
    ? `Locked: ${st.locked_reason || "connect to the server to continue"}. Your notes are safe and will be back once Latchkey reaches the server.`
    : "";
  $("workspace").hidden = locked;
  renderBanner();
  const key = `${st.state}|${st.pending}|${st.notes_changed}|${st.last_sync_at}|${accountOf(st)}`;
  if (!locked && key !== listKey) {
    listKey = key;
    refreshList();
  }
  if (prev && !SIGNED_IN.includes(prev.state)) {
    refreshList();
  }
  if (view === "account") renderAccount(st);
}

/** Another account shows now: nothing of the one before stays on screen. */
function accountChanged() {
  closeEditor();
  notes = [];
  $("note-list").replaceChildren();
  clearTimeout(searchTimer);
  $("search-box").value = "";
  searchQuery = "";
  notice = null;
  if (view === "trash") refreshTrash();
}

function renderSignin(st, prev) {
  const wasSignedIn = prev && SIGNED_IN.includes(prev.state);
  if (wasSignedIn || $("signin").hidden) {
    // The session may end while the user types: what they typed is saved
    // (for this same user, it syncs after they sign in again).
    flush();
    closeEditor();
    notes = [];
    listKey = "";
    $("note-list").replaceChildren();
    $("search-box").value = "";
    searchQuery = "";
    showNotes();
  }
  showScreen("signin");
  $("login-cancel").hidden = !adding;
  const ctx = $("login-context");
  if (adding) {
    ctx.textContent = `Sign in to another account. ${st.user ? st.user.username : "The active account"} stays signed in: switch back from Account.`;
    ctx.className = "muted";
  } else if (st.state === "expired") {
    ctx.textContent = "Your session has expired. Sign in again: your notes and unsynced changes are kept and will sync.";
    ctx.className = "notice";
  } else if (st.state === "revoked") {
    ctx.textContent = "You were signed out by the server. Sign in again: your notes and unsynced changes are kept and will sync.";
    ctx.className = "notice";
  } else {
    ctx.textContent = "Sign in once while online; your notes then work offline too.";
    ctx.className = "muted";
  }
  if (!adding) {
    if (st.user && !$("login-username").value) $("login-username").value = st.user.username;
    if (st.server && !$("login-server").value) $("login-server").value = st.server;
  }
  if (st.last_error && st.state === "signed_out" && !$("login-error").textContent) {
    showLoginError(sentence(st.last_error));
  }
  renderSigninAccounts(st);
}

/** Signed out of one account (or it ended), the others are a click away. */
function renderSigninAccounts(st) {
  const others = adding ? [] : (st.accounts || []).filter((a) => !a.active);
  $("signin-accounts").hidden = others.length === 0;
  $("signin-account-list").replaceChildren(...others.map((a) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.setAttribute("data-testid", "signin-account-switch");
    b.className = "ghost";
    b.textContent = `${a.username} · ${hostOf(a.server)}`;
    b.addEventListener("click", async () => {
      b.disabled = true;
      try {
        render(await api.switchAccount(a.server, a.username));
      } catch (err) {
        showLoginError(sentence(err));
      } finally {
        b.disabled = false;
      }
    });
    li.append(b);
    return li;
  }));
}

/** Before another account shows: the editor's text saved (in the account
 *  it was typed in) and the editor closed. False if a text could not be
 *  saved: the account stays, so that the text never lands in another. */
async function beforeSwitch() {
  await flush();
  if (unsaved.size || (draft && draft.dirty)) {
    showBanner("A note could not be saved yet, so the account stays as it is. Try again once it is saved.");
    return false;
  }
  closeEditor();
  return true;
}

async function addAccount() {
  if (!(await beforeSwitch())) return;
  adding = true;
  $("login-username").value = "";
  $("login-password").value = "";
  showLoginError("");
  render(status);
  $("login-username").focus();
}

function cancelAdding() {
  adding = false;
  $("login-password").value = "";
  showLoginError("");
  render(status);
}

function renderStatusBar(st) {
  const conn = st.work_offline ? "working offline" : st.online ? "online" : "offline";
  $("status-connectivity").textContent = conn;
  $("connectivity-pill").dataset.state = conn.replace(" ", "-");
  $("status-pending").textContent = String(st.pending);
  $("status-last-sync").textContent = st.last_sync_at ? formatTime(st.last_sync_at) : "never";
  const failed = st.last_sync_result && st.last_sync_result !== "ok" && st.last_sync_attempt_at;
  $("status-sync-failed").hidden = !failed;
  $("status-sync-failed").textContent = failed
    ? `· failed at ${formatTime(st.last_sync_attempt_at)}: ${st.last_sync_result}`
    : "";
  $("status-user").textContent = st.user ? st.user.username : "";
  $("status-server").textContent = st.server ? `@${hostOf(st.server)}` : "";
  const until = st.offline_until ? `Works offline until ${formatDate(st.offline_until)}` : "";
  $("status-until").textContent = until;
  $("status-until").title = until;
  $("work-offline").checked = st.work_offline;
  const index = st.search_index;
  $("search-index").hidden = !index;
  $("search-index").textContent = index
    ? `· preparing search ${Math.floor((100 * index.done) / Math.max(index.total, 1))}%`
    : "";
}

// ---- sign-in -------------------------------------------------------------

function showLoginError(text) {
  $("login-error").textContent = text;
  $("login-error").hidden = !text;
}

async function onSignin(ev) {
  ev.preventDefault();
  const server = $("login-server").value.trim();
  const username = $("login-username").value.trim();
  const password = $("login-password").value;
  if (!server || !username || !password) {
    showLoginError("Enter the server address, your username and your password.");
    return;
  }
  showLoginError("");
  const button = $("login-submit");
  button.disabled = true;
  button.textContent = "Signing in…";
  try {
    const st = await api.signIn(server, username, password);
    $("login-password").value = "";
    adding = false;
    render(st);
  } catch (err) {
    showLoginError(sentence(err));
  } finally {
    button.disabled = false;
    button.textContent = "Sign in";
  }
}

// ---- notes ---------------------------------------------------------------

async function refreshList() {
  const query = searchQuery.trim();
  let found;
  try {
    found = query ? await api.searchNotes(query) : await api.listNotes();
  } catch (err) {
    if (err && err.code !== "locked") console.warn("list failed", err);
    return;
  }
  // A later keystroke's search is on its way: this one is stale.
  if (query !== searchQuery.trim()) return;
  notes = found;
  const list = $("note-list");
  list.replaceChildren(
    ...notes.map((n) => {
      const li = document.createElement("li");
      li.dataset.testid = "note-item";
      li.setAttribute("data-testid", "note-item");
      li.dataset.id = n.id;
      li.tabIndex = 0;
      if (draft && draft.id === n.id) li.classList.add("active");
      const title = document.createElement("div");
      title.className = "title";
      title.textContent = n.title || "Untitled";
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.textContent = n.preview || "";
      li.append(title, meta);
      if (n.conflict_of) {
        // On the preview line: a long title is cut short, the tag must show.
        const tag = document.createElement("span");
        tag.className = "conflict-tag";
        tag.textContent = "conflict copy";
        meta.prepend(tag, " ");
      }
      if (n.pending) {
        const dot = document.createElement("span");
        dot.className = "pending-dot";
        dot.title = "Not synced yet";
        li.append(dot);
      }
      li.addEventListener("click", () => openNote(n.id));
      li.addEventListener("keydown", (e) => { if (e.key === "Enter") openNote(n.id); });
      return li;
    }),
  );
  $("empty-list").hidden = notes.length > 0;
  $("empty-list").textContent = query ? "No note matches." : "No notes yet.";
  $("note-count").textContent = countText(notes.length, query);
  reloadOpenNote();
}

function countText(n, query) {
  const notesWord = (k) => (k === 1 ? "1 note" : `${k} notes`);
  if (!query) return notesWord(n);
  return n >= SEARCH_LIMIT ? `the ${SEARCH_LIMIT} newest matches` : `${notesWord(n)} found`;
}

// ---- search --------------------------------------------------------------

function onSearchInput() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    searchQuery = $("search-box").value;
    refreshList();
  }, SEARCH_DELAY_MS);
}

/** Escape: the whole list again, and the keyboard back in the list. */
function leaveSearch() {
  clearTimeout(searchTimer);
  const was = searchQuery.trim() !== "" || $("search-box").value !== "";
  $("search-box").value = "";
  searchQuery = "";
  if (was) refreshList();
  const first = $("note-list").querySelector("li.active") || $("note-list").firstElementChild;
  if (first) first.focus();
  else $("search-box").blur();
}

function onKey(e) {
  if ($("app").hidden || $("workspace").hidden) return;
  const mod = (e.ctrlKey || e.metaKey) && !e.altKey && !e.shiftKey;
  const key = e.key.toLowerCase();
  if (mod && key === "n") {
    e.preventDefault();
    showNotes();
    newNote();
  } else if (mod && key === "f") {
    e.preventDefault();
    showNotes();
    $("search-box").focus();
    $("search-box").select();
  } else if (e.key === "Escape") {
    if (!$("history-view").hidden) {
      closeHistory();
    } else if (view === "trash" || view === "account") {
      showNotes();
    } else if (document.activeElement === $("search-box") || searchQuery) {
      e.preventDefault();
      leaveSearch();
    }
  }
}

// ---- trash ---------------------------------------------------------------

async function openTrash() {
  await flush();
  closeHistory();
  view = "trash";
  $("editor-empty").hidden = true;
  $("editor-body").hidden = true;
  $("account-view").hidden = true;
  $("trash-view").hidden = false;
  disarmEmptyTrash();
  await refreshTrash();
  $("trash-close").focus();
}

/** Back from the trash or the account panel to the list and the editor. */
function showNotes() {
  if (view === "notes") return;
  view = "notes";
  $("trash-view").hidden = true;
  $("account-view").hidden = true;
  if (draft) showDraft();
  else $("editor-empty").hidden = false;
}

// ---- account ---------------------------------------------------------------

async function openAccountView() {
  await flush();
  closeHistory();
  view = "account";
  $("editor-empty").hidden = true;
  $("editor-body").hidden = true;
  $("trash-view").hidden = true;
  $("account-view").hidden = false;
  await openAccount();
}

async function refreshTrash() {
  let trashed;
  try {
    trashed = await api.listTrash();
  } catch (err) {
    showBanner(sentence(err));
    return;
  }
  $("trash-list").replaceChildren(
    ...trashed.map((t) => {
      const li = document.createElement("li");
      li.setAttribute("data-testid", "trash-item");
      li.dataset.id = t.id;
      const title = document.createElement("div");
      title.className = "title";
      title.textContent = t.title || "Untitled";
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.textContent = `Deleted ${formatDate(t.deleted_at)} · ${t.preview || ""}`;
      const restore = document.createElement("button");
      restore.setAttribute("data-testid", "trash-restore");
      restore.className = "ghost";
      restore.textContent = "Restore";
      restore.title = "Bring this note back, on every device";
      restore.addEventListener("click", () => restoreFromTrash(t.id, restore));
      const text = document.createElement("div");
      text.className = "grow";
      text.append(title, meta);
      li.append(text, restore);
      return li;
    }),
  );
  $("trash-nothing").hidden = trashed.length > 0;
  $("trash-empty").disabled = trashed.length === 0;
  $("trash-empty").dataset.count = String(trashed.length);
}

async function restoreFromTrash(id, button) {
  button.disabled = true;
  try {
    const note = await api.restoreFromTrash(id);
    showNotes();
    await refreshList();
    await openNote(note.id);
    showBanner(`"${note.title || "Untitled"}" is back from the trash.`);
  } catch (err) {
    button.disabled = false;
    showBanner(sentence(err));
  }
}

let emptyArmed = null;

/** Emptying the trash cannot be undone: the first click asks, the second
 *  (within a few seconds) empties it. */
async function onEmptyTrash() {
  const b = $("trash-empty");
  if (!emptyArmed) {
    const n = Number(b.dataset.count || 0);
    b.textContent = `Remove ${n === 1 ? "1 note" : `${n} notes`} for good? Click again`;
    b.classList.add("armed");
    emptyArmed = setTimeout(disarmEmptyTrash, 5000);
    return;
  }
  disarmEmptyTrash();
  try {
    await api.emptyTrash();
  } catch (err) {
    showBanner(sentence(err));
  }
  await refreshTrash();
}

function disarmEmptyTrash() {
  clearTimeout(emptyArmed);
  emptyArmed = null;
  $("trash-empty").textContent = "Empty trash";
  $("trash-empty").classList.remove("armed");
}

// ---- history -------------------------------------------------------------

async function openHistory() {
  if (!draft) return;
  await flush();
  const d = draft;
  $("history-view").hidden = false;
  $("history-list").replaceChildren();
  const message = (text) => {
    $("history-message").textContent = text;
    $("history-message").hidden = !text;
  };
  if (!d.id) return message("No earlier versions yet: this note is new.");
  if (!status || !status.online) {
    return message("History needs the server, and Latchkey is offline now. Your notes and everything else keep working.");
  }
  message("Loading…");
  let versions;
  try {
    versions = await api.noteHistory(d.id);
  } catch (err) {
    return message(sentence(err));
  }
  if (draft !== d || $("history-view").hidden) return;
  message(versions.length ? "" : "No earlier versions yet.");
  $("history-list").replaceChildren(
    ...versions.map((v) => {
      const li = document.createElement("li");
      li.setAttribute("data-testid", "history-item");
      li.dataset.rev = String(v.rev);
      const when = document.createElement("time");
      when.className = "when";
      when.dateTime = new Date(v.updated_at * 1000).toISOString();
      when.textContent = formatDate(v.updated_at);
      const title = document.createElement("div");
      title.className = "title";
      title.textContent = v.deleted ? "Deleted" : v.title || "Untitled";
      const preview = document.createElement("div");
      preview.className = "meta";
      preview.textContent = v.deleted ? "The note was deleted here." : v.body.slice(0, 240);
      li.append(when, title, preview);
      if (!v.deleted) {
        const restore = document.createElement("button");
        restore.setAttribute("data-testid", "history-restore");
        restore.className = "ghost small";
        restore.textContent = "Restore this version";
        restore.addEventListener("click", () => restoreVersion(d, v));
        li.append(restore);
      }
      return li;
    }),
  );
}

function closeHistory() {
  $("history-view").hidden = true;
}

/** An ordinary save of the old text on the note's current version: the
 *  text it replaces goes into the history in turn, so nothing is lost. */
async function restoreVersion(d, v) {
  if (draft !== d) return;
  d.title = v.title;
  d.body = v.body;
  d.dirty = true;
  $("note-title").value = v.title;
  $("note-body").value = v.body;
  closeHistory();
  await flush();
  showBanner(`Restored the version of ${formatDate(v.updated_at)}. The text it replaced is in the history.`);
}

// ---- export --------------------------------------------------------------

async function exportAll() {
  const button = $("export-all");
  button.disabled = true;
  const show = (text, fraction, running) => {
    $("export-progress").hidden = false;
    $("export-text").textContent = text;
    $("export-bar").value = fraction;
    $("export-cancel").textContent = running ? "Cancel" : "Dismiss";
  };
  const stop = await onEvent("export-progress", (p) => {
    show(`Exporting ${p.done} of ${p.total} notes…`, p.total ? p.done / p.total : 1, true);
  });
  try {
    const report = await api.exportAll();
    if (report) {
      const notesWord = report.total === 1 ? "1 note" : `${report.total} notes`;
      show(
        report.cancelled
          ? `Export cancelled: ${report.written} of ${notesWord} written to ${report.folder}.`
          : `Exported ${notesWord} to ${report.folder}.`,
        report.total ? report.written / report.total : 1,
        false,
      );
    }
  } catch (err) {
    show(sentence(err), 0, false);
  } finally {
    stop();
    button.disabled = false;
  }
}

function onExportCancel() {
  if ($("export-cancel").textContent === "Cancel") api.cancelExport();
  else $("export-progress").hidden = true;
}

/** Shows the open note's new text at once when a sync changed it and the
 *  user has nothing unsaved in it. With unsaved typing the text stays: its
 *  save, on the old version, keeps it as a conflict copy. */
async function reloadOpenNote() {
  const d = draft;
  const quiet = () => draft === d && !d.dirty && !saving.has(d);
  if (!d || !d.id || !quiet()) return;
  const listed = notes.find((n) => n.id === d.id);
  if (!listed || listed.version === d.version) return;
  try {
    const n = await api.getNote(d.id);
    if (!quiet()) return;
    Object.assign(d, { version: n.version, title: n.title, body: n.body, conflictOf: n.conflict_of });
    $("note-title").value = n.title;
    $("note-body").value = n.body;
    $("conflict-note").hidden = !n.conflict_of;
  } catch (err) {
    if (err && err.code !== "note_not_found") console.warn("reload failed", err);
  }
}

function closeEditor() {
  draft = null;
  closeHistory();
  $("editor-body").hidden = true;
  $("editor-empty").hidden = false;
}

function showDraft() {
  view = "notes";
  $("trash-view").hidden = true;
  $("account-view").hidden = true;
  $("editor-empty").hidden = true;
  $("editor-body").hidden = false;
  $("note-title").value = draft.title;
  $("note-body").value = draft.body;
  $("conflict-note").hidden = !draft.conflictOf;
  $("save-state").textContent = "";
  for (const li of $("note-list").children) li.classList.toggle("active", li.dataset.id === draft.id);
}

async function openNote(id) {
  closeHistory();
  const chain = flush();
  notice = null; // about the note left behind
  renderBanner();
  // Only a save of this very note is waited for: its text is what opens.
  if ([...saving].some((d) => d.id === id)) await chain;
  try {
    const n = await api.getNote(id);
    draft = { id: n.id, version: n.version, title: n.title, body: n.body, conflictOf: n.conflict_of, dirty: false };
    showDraft();
  } catch (err) {
    showBanner(sentence(err));
  }
}

/** The new empty editor shows at once; the previous note's save (however
 *  slow) goes on behind it, and what is typed lands in the new note. */
function newNote() {
  flush();
  notice = null; // about the note left behind
  renderBanner();
  draft = { id: null, version: null, title: "", body: "", conflictOf: null, dirty: false };
  showDraft();
  $("note-title").focus();
}

function onEdit() {
  if (!draft) return;
  draft.title = $("note-title").value;
  draft.body = $("note-body").value;
  draft.dirty = true;
  $("save-state").textContent = "Editing…";
  clearTimeout(saveTimer);
  saveTimer = setTimeout(() => { flush(); }, SAVE_DELAY_MS);
}

/** Saves the draft now if it changed, and any earlier draft whose save
 *  failed. Saves run one after another, so a new note is created once and
 *  later saves use its id and version. */
function flush() {
  clearTimeout(saveTimer);
  saveTimer = null;
  for (const d of unsaved) if (d !== draft) queueSave(d);
  unsaved.clear();
  if (draft && draft.dirty) queueSave(draft);
  return saveChain;
}

function queueSave(d) {
  d.dirty = false;
  const snapshot = { title: d.title, body: d.body };
  saving.add(d);
  saveChain = saveChain.then(async () => {
    try {
      const saved = await api.saveNote(d.id, d.version, snapshot.title, snapshot.body);
      if (d.id && saved.id !== d.id) movedToCopy(d, saved, snapshot);
      d.id = saved.id;
      d.version = saved.version;
      if (draft === d && !d.dirty) $("save-state").textContent = "Saved";
    } catch (err) {
      d.dirty = true;
      if (draft === d) $("save-state").textContent = "Not saved";
      else unsaved.add(d);
      showBanner(sentence(err));
    } finally {
      saving.delete(d);
    }
    await refreshList();
  });
}

/** The note changed on another device while this text was being written:
 *  the engine kept it as a conflict copy, where the editor goes on. */
function movedToCopy(d, copy, snapshot) {
  d.conflictOf = copy.conflict_of;
  if (draft === d) {
    if ($("note-title").value === snapshot.title) {
      $("note-title").value = copy.title;
      d.title = copy.title;
    }
    $("conflict-note").hidden = false;
  }
  showBanner("This note was changed on another device while you were writing. Both texts are kept: yours is in a conflict copy, open now.");
}

async function deleteCurrent() {
  if (!draft) return;
  const d = draft;
  clearTimeout(saveTimer);
  d.dirty = false;
  await saveChain;
  closeEditor();
  if (d.id) {
    try {
      await api.deleteNote(d.id);
    } catch (err) {
      showBanner(sentence(err));
    }
  }
  refreshList();
}


function showBanner(text) {
  notice = text ? { text, until: Date.now() + NOTICE_MS } : null;
  renderBanner();
  if (notice) setTimeout(renderBanner, NOTICE_MS + 50);
}

/** The engine's last error, else the app's notice while it lasts. */
function renderBanner() {
  const err = status && status.last_error;
  const locked = status && status.state === "locked";
  const showErr = err && !locked && !["network", "working_offline"].includes(err.code);
  const text = showErr ? sentence(err) : notice && Date.now() < notice.until ? notice.text : "";
  $("error-banner").textContent = text;
  $("error-banner").hidden = !text;
}

// ---- status bar actions --------------------------------------------------

async function syncNow() {
  const b = $("sync-now");
  b.disabled = true;
  try {
    render(await api.syncNow());
  } catch (err) {
    showBanner(sentence(err));
  } finally {
    b.disabled = false;
  }
}

async function toggleOffline(ev) {
  try {
    render(await api.setWorkOffline(ev.target.checked));
  } catch (err) {
    showBanner(sentence(err));
  }
}

async function signOut() {
  await flush();
  try {
    render(await api.signOut(false));
  } catch (err) {
    showBanner(sentence(err));
  }
}

// ---- start ---------------------------------------------------------------

async function start() {
  $("login-form").addEventListener("submit", onSignin);
  $("note-new").addEventListener("click", newNote);
  $("note-title").addEventListener("input", onEdit);
  $("note-body").addEventListener("input", onEdit);
  $("note-title").addEventListener("blur", () => flush());
  $("note-body").addEventListener("blur", () => flush());
  $("note-delete").addEventListener("click", deleteCurrent);
  $("sync-now").addEventListener("click", syncNow);
  $("work-offline").addEventListener("change", toggleOffline);
  $("signout").addEventListener("click", signOut);
  $("search-box").addEventListener("input", onSearchInput);
  $("trash-open").addEventListener("click", openTrash);
  $("trash-close").addEventListener("click", showNotes);
  $("trash-empty").addEventListener("click", onEmptyTrash);
  $("note-history").addEventListener("click", openHistory);
  $("history-close").addEventListener("click", closeHistory);
  $("export-all").addEventListener("click", exportAll);
  $("export-cancel").addEventListener("click", onExportCancel);
  $("account-open").addEventListener("click", openAccountView);
  $("login-cancel").addEventListener("click", cancelAdding);
  initAccount({
    status: () => status,
    leave: showNotes,
    beforeSwitch,
    render,
    addAccount,
  });
  document.addEventListener("keydown", onKey);
  document.addEventListener("visibilitychange", () => { if (document.hidden) flush(); });
  window.addEventListener("pagehide", () => { flush(); });
  onClose(() => flush());

  try {
    const settings = await api.settings();
    $("login-server").value = settings.server_url || "";
    if (settings.last_user) $("login-username").value = settings.last_user;
  } catch (_) { /* defaults stay */ }
  await onStatus(render);
  render(await api.status());
}

start();
