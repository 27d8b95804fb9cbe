// Times as the screens show them.

/** A time today as hh:mm:ss, else date and time. */
export function formatTime(secs) {
  const d = new Date(secs * 1000);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return sameDay ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }) : d.toLocaleString();
}

/** A date and time, medium length. */
export function formatDate(secs) {
  return new Date(secs * 1000).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

/** A server address without its scheme, as a person reads it. */
export function hostOf(server) {
  return (server || "").replace(/^https?:\/\//, "").replace(/\/$/, "");
}
