// The one place that talks to Rust: every invoke and the status event go
// through here, and error codes become sentences here.

const tauri = window.__TAURI__;

const SENTENCES = {
  keychain_unavailable: "The system keychain is not available, so Latchkey cannot keep you signed in safely. Start your keyring (for example gnome-keyring) and try again.",
  network: "The server cannot be reached. Check the address and your connection.",
  insecure_url: "That server address uses plain http to another computer. Use an https:// address.",
  invalid_url: "That server address is not valid.",
  invalid_credentials: "The username or password is wrong.",
  throttled: "Too many failed attempts. Wait a few minutes and try again.",
  session_expired: "Your session has expired. Sign in again; your notes are kept.",
  session_revoked: "You were signed out by the server. Sign in again; your notes are kept.",
  locked: "Latchkey is locked until it can reach the server.",
  not_signed_in: "You are not signed in.",
  working_offline: "Work offline is on. Turn it off to sync.",
  token_invalid: "Your stored sign-in could not be verified. Sign in again.",
  server_error: "The server answered unexpectedly. Try again later.",
  storage: "Your change could not be saved on this computer.",
  note_not_found: "That note no longer exists.",
  invalid_input: "That input is not valid.",
  too_large: "The server refused a note as too large; it stays on this computer.",
  cursor_ahead: "The server has lost recent changes; Latchkey is sending them again.",
  offline: "That needs the server, and Latchkey is offline now. Everything else keeps working.",
  export: "The notes could not be exported.",
  wrong_password: "The current password is wrong.",
  session_not_found: "That device is not signed in any more.",
  account_switched: "Another account became active; this was left for later.",
};

/** A sentence for an error from Rust ({code, message}). */
export function sentence(err) {
  if (!err) return "";
  if (typeof err === "string") return err;
  // Some messages carry the detail a user needs (which limit, which reason).
  if (["storage", "invalid_input", "locked", "keychain_unavailable", "server_error", "throttled", "offline", "export"].includes(err.code) && err.message) {
    return err.message.charAt(0).toUpperCase() + err.message.slice(1) + ".";
  }
  return SENTENCES[err.code] || err.message || "Something went wrong.";
}

export function call(cmd, args = {}) {
  return tauri.core.invoke(cmd, args);
}

export function onStatus(handler) {
  return onEvent("status", handler);
}

/** Listens to an event from Rust; resolves to the function that stops it. */
export function onEvent(name, handler) {
  return tauri.event.listen(name, (e) => handler(e.payload));
}

/** Runs `handler` before the window closes (it is awaited). */
export function onClose(handler) {
  try {
    tauri.window.getCurrentWindow().onCloseRequested(async () => { await handler(); });
  } catch (_) { /* no window API: nothing to flush */ }
}

export const api = {
  status: () => call("status"),
  settings: () => call("settings"),
  signIn: (serverUrl, username, password) => call("sign_in", { serverUrl, username, password }),
  signOut: (wipe) => call("sign_out", { wipe }),
  listNotes: () => call("list_notes"),
  getNote: (id) => call("get_note", { id }),
  saveNote: (id, version, title, body) => call("save_note", { id, version, title, body }),
  deleteNote: (id) => call("delete_note", { id }),
  syncNow: () => call("sync_now"),
  setWorkOffline: (on) => call("set_work_offline", { on }),
  searchNotes: (query) => call("search_notes", { query }),
  listTrash: () => call("list_trash"),
  restoreFromTrash: (id) => call("restore_from_trash", { id }),
  emptyTrash: () => call("empty_trash"),
  noteHistory: (id) => call("note_history", { id }),
  exportAll: () => call("export_all"),
  cancelExport: () => call("cancel_export"),
  deviceName: () => call("device_name"),
  setDeviceName: (name) => call("set_device_name", { name }),
  switchAccount: (server, username) => call("switch_account", { server, username }),
  listSessions: () => call("list_sessions"),
  revokeSession: (sessionId) => call("revoke_session", { sessionId }),
  revokeOtherSessions: () => call("revoke_other_sessions"),
  changePassword: (current, next) => call("change_password", { current, new: next }),
};
