//! `POST /v1/sync/push`, `GET /v1/sync/pull`, the live-updates stream
//! `GET /v1/sync/events` and `GET /v1/notes/{id}/history`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Most ops one push may carry.
pub const MAX_OPS_PER_PUSH: usize = 1000;
/// Largest push body, in bytes.
pub const MAX_PUSH_BYTES: usize = 8 * 1024 * 1024;
/// Largest note title, in bytes of UTF-8.
pub const MAX_TITLE_BYTES: usize = 4 * 1024;
/// Largest note body, in bytes of UTF-8.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Default and largest page size of a pull.
pub const DEFAULT_PULL_LIMIT: u32 = 500;
pub const MAX_PULL_LIMIT: u32 = 1000;
/// A pull page stops early once it holds about this many bytes of notes.
pub const PULL_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// A push answer carries `server_note`s until their JSON passes this many
/// bytes; later ones are left out (PROTOCOL.md v1.1, "Sync edge cases").
pub const MAX_PUSH_ANSWER_NOTES_BYTES: usize = 8 * 1024 * 1024;
/// A conflict copy's title keeps at most this many bytes of the original.
pub const CONFLICT_COPY_TITLE_BYTES: usize = 4080;
/// What a conflict copy's title ends with.
pub const CONFLICT_COPY_SUFFIX: &str = " (conflict copy)";

/// The title of a conflict copy of a note titled `title`: cut on a
/// character boundary to at most [`CONFLICT_COPY_TITLE_BYTES`], then the
/// suffix, so that it always fits [`MAX_TITLE_BYTES`] and the copy can be
/// edited and pushed again.
pub fn conflict_copy_title(title: &str) -> String {
    let mut end = title.len().min(CONFLICT_COPY_TITLE_BYTES);
    while !title.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CONFLICT_COPY_SUFFIX}", &title[..end])
}

/// The body of a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    pub ops: Vec<Op>,
}

/// One queued change. `op_id` makes a retried push safe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Op {
    Upsert {
        op_id: Uuid,
        note_id: Uuid,
        /// The rev this edit was made on; 0 for a new note.
        base_rev: i64,
        title: String,
        body: String,
        client_time: i64,
        /// For a new note made as a conflict copy on the device: the note
        /// it was split from (the server keeps it as the note's
        /// `conflict_of`, so every device marks the copy). An addition to
        /// PROTOCOL.md that a v1 server ignores.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conflict_of: Option<Uuid>,
    },
    Delete {
        op_id: Uuid,
        note_id: Uuid,
        base_rev: i64,
    },
}

impl Op {
    pub fn op_id(&self) -> Uuid {
        match self {
            Op::Upsert { op_id, .. } | Op::Delete { op_id, .. } => *op_id,
        }
    }

    pub fn note_id(&self) -> Uuid {
        match self {
            Op::Upsert { note_id, .. } | Op::Delete { note_id, .. } => *note_id,
        }
    }

    pub fn base_rev(&self) -> i64 {
        match self {
            Op::Upsert { base_rev, .. } | Op::Delete { base_rev, .. } => *base_rev,
        }
    }
}

impl PushRequest {
    /// Checks the limits serde cannot: op count, negative revs, title and
    /// body sizes. A push is validated whole before anything is applied.
    pub fn validate(&self) -> Result<(), String> {
        if self.ops.len() > MAX_OPS_PER_PUSH {
            return Err(format!(
                "a push carries at most {MAX_OPS_PER_PUSH} ops, this one has {}",
                self.ops.len()
            ));
        }
        for (i, op) in self.ops.iter().enumerate() {
            if op.base_rev() < 0 {
                return Err(format!("ops[{i}].base_rev must not be negative"));
            }
            if let Op::Upsert { title, body, .. } = op {
                if title.len() > MAX_TITLE_BYTES {
                    return Err(format!("ops[{i}].title is over {MAX_TITLE_BYTES} bytes"));
                }
                if body.len() > MAX_BODY_BYTES {
                    return Err(format!("ops[{i}].body is over {MAX_BODY_BYTES} bytes"));
                }
            }
        }
        Ok(())
    }
}

/// The outcome of one op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpStatus {
    Applied,
    Duplicate,
    Conflict,
}

/// One entry of a push answer, in the order of the ops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    pub op_id: Uuid,
    pub status: OpStatus,
    pub note_id: Uuid,
    /// The note's rev after this op (for a conflict: the server's rev).
    pub rev: i64,
    /// For `duplicate`: what the first push of this op got (`applied` or
    /// `conflict`). An addition to PROTOCOL.md a v1 client may ignore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_status: Option<OpStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_copy_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_rev: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_note: Option<ServerNote>,
}

/// The 200 answer of a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResponse {
    pub results: Vec<OpResult>,
    /// The user's latest rev. Informative only: never a pull cursor.
    pub cursor: i64,
}

/// A note as the server holds it. Deleted notes are tombstones with an
/// empty title and body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub note_id: Uuid,
    pub rev: i64,
    pub title: String,
    pub body: String,
    pub deleted: bool,
    pub updated_at: i64,
    /// Set on a conflict copy: the note it was split from.
    #[serde(default)]
    pub conflict_of: Option<Uuid>,
}

/// The server's version of a note, as carried by a `conflict` result.
pub type ServerNote = Change;

/// The 200 answer of a pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResponse {
    pub changes: Vec<Change>,
    pub cursor: i64,
    pub more: bool,
}

/// Path of the live-updates stream (Server-Sent Events).
pub const EVENTS_PATH: &str = "/v1/sync/events";
/// The stream's event for a rev that advanced; data [`ChangedEvent`].
pub const EVENT_CHANGED: &str = "changed";
/// The stream's last event when the session is revoked; data
/// [`RevokedEvent`].
pub const EVENT_REVOKED: &str = "revoked";
/// The stream sends a comment after at most this many seconds without
/// output, so that proxies keep an idle stream open.
pub const EVENTS_PING_SECS: u64 = 15;
/// The server keeps at least this many earlier versions of every note.
pub const HISTORY_KEPT_VERSIONS: usize = 50;

/// The data of an `event: changed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedEvent {
    /// The user's latest rev.
    pub cursor: i64,
}

/// The data of an `event: revoked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedEvent {
    pub reason: crate::Reason,
}

/// One earlier version of a note, as `GET /v1/notes/{id}/history` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteVersion {
    /// The rev this version had.
    pub rev: i64,
    pub title: String,
    pub body: String,
    pub deleted: bool,
    pub updated_at: i64,
}

/// The 200 answer of `GET /v1/notes/{id}/history`: newest first, the
/// current version left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub versions: Vec<NoteVersion>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_copy_title_always_fits() {
        assert_eq!(conflict_copy_title("Plan"), "Plan (conflict copy)");
        let long = "x".repeat(MAX_TITLE_BYTES);
        let copy = conflict_copy_title(&long);
        assert_eq!(
            copy.len(),
            CONFLICT_COPY_TITLE_BYTES + CONFLICT_COPY_SUFFIX.len()
        );
        assert!(copy.len() <= MAX_TITLE_BYTES);
        // A four-byte character across the cut is left out whole.
        let mut wide = "y".repeat(CONFLICT_COPY_TITLE_BYTES - 2);
        wide.push('🦀');
        let copy = conflict_copy_title(&wide);
        assert!(copy.starts_with(&"y".repeat(CONFLICT_COPY_TITLE_BYTES - 2)));
        assert_eq!(
            copy.len(),
            CONFLICT_COPY_TITLE_BYTES - 2 + CONFLICT_COPY_SUFFIX.len()
        );
    }
}
