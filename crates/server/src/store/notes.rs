//! What a push does to a user's notes, decided apart from any database, so
//! that both stores apply ops by the same rules: a new version on the
//! latest rev, a conflict (with its copy) on an older one, and an op seen
//! before answered as it was the first time. The stores only read the notes
//! an op touches and write what this module says.

use latchkey_protocol::{Change, Op, OpResult, OpStatus, Reason, sync::conflict_copy_title};
use uuid::Uuid;

use super::{Result, StoreError};

/// Conflict-copy ids are derived from the op id, so a retried push makes
/// the same copy.
const CONFLICT_COPY_NAMESPACE: Uuid = Uuid::from_u128(0x6c61_7463_686b_6579_2d63_6f70_7921_0001);

/// The id an upsert's conflict copy gets, unless a note has it already.
pub(super) fn conflict_copy_id(op_id: &Uuid) -> Uuid {
    Uuid::new_v5(&CONFLICT_COPY_NAMESPACE, op_id.as_bytes())
}

/// What one op (not seen before) did.
#[derive(Debug)]
pub(super) struct Applied {
    /// Its answer.
    pub result: OpResult,
    /// The version it replaced, to keep in the note's history.
    pub replaced: Option<Change>,
    /// The note version it wrote: the op's own, or its conflict copy.
    pub written: Option<Change>,
}

/// Applies `op` to `current`, the note it names as the store holds it now.
/// `copy_taken` says whether a note already has a given id (asked only for
/// an upsert that conflicts). Revs are taken from `last_rev`.
pub(super) fn apply_op(
    op: &Op,
    current: Option<Change>,
    copy_taken: impl FnOnce(Uuid) -> Result<bool>,
    last_rev: &mut i64,
    now: i64,
) -> Result<Applied> {
    let note_id = op.note_id();
    let current_rev = current.as_ref().map_or(0, |n| n.rev);
    let mut applied = Applied {
        result: OpResult {
            op_id: op.op_id(),
            status: OpStatus::Applied,
            note_id,
            rev: current_rev,
            original_status: None,
            conflict_copy_id: None,
            copy_rev: None,
            server_note: None,
        },
        replaced: None,
        written: None,
    };
    if op.base_rev() == current_rev {
        if let Some(note) = new_version(op, current.as_ref(), last_rev, now) {
            applied.result.rev = note.rev;
            applied.replaced = current;
            applied.written = Some(note);
        }
        return Ok(applied);
    }
    // A conflict: the server's version stays. A note the server does not
    // have at all (a base from the future) is shown as an empty tombstone.
    applied.result.status = OpStatus::Conflict;
    applied.result.server_note = Some(current.unwrap_or(Change {
        note_id,
        rev: 0,
        title: String::new(),
        body: String::new(),
        deleted: true,
        updated_at: now,
        conflict_of: None,
    }));
    if let Some(copy) = conflict_copy(op, copy_taken, last_rev, now)? {
        applied.result.conflict_copy_id = Some(copy.note_id);
        applied.result.copy_rev = Some(copy.rev);
        applied.written = Some(copy);
    }
    Ok(applied)
}

/// The user's next rev, taken.
fn next_rev(last_rev: &mut i64) -> i64 {
    *last_rev += 1;
    *last_rev
}

/// What `op` makes of `current` when it is based on its latest rev; None
/// when it changes nothing.
fn new_version(op: &Op, current: Option<&Change>, last_rev: &mut i64, now: i64) -> Option<Change> {
    let note_id = op.note_id();
    match op {
        Op::Upsert {
            title,
            body,
            conflict_of,
            ..
        } => Some(Change {
            note_id,
            rev: next_rev(last_rev),
            title: title.clone(),
            body: body.clone(),
            deleted: false,
            updated_at: now,
            // A note keeps what it was split from; a new one may be a
            // copy the device made.
            conflict_of: match current {
                Some(n) => n.conflict_of,
                None => *conflict_of,
            },
        }),
        // Deleting what is already a tombstone changes nothing.
        Op::Delete { .. } if current.is_some_and(|n| n.deleted) => None,
        Op::Delete { .. } => Some(Change {
            note_id,
            rev: next_rev(last_rev),
            title: String::new(),
            body: String::new(),
            deleted: true,
            updated_at: now,
            conflict_of: current.and_then(|n| n.conflict_of),
        }),
    }
}

/// For an upsert that conflicts, the conflict copy keeping its text; a
/// delete that conflicts keeps nothing.
fn conflict_copy(
    op: &Op,
    copy_taken: impl FnOnce(Uuid) -> Result<bool>,
    last_rev: &mut i64,
    now: i64,
) -> Result<Option<Change>> {
    let Op::Upsert {
        op_id, title, body, ..
    } = op
    else {
        return Ok(None);
    };
    let mut copy_id = conflict_copy_id(op_id);
    // Taken only when this op id was seen before and its result pruned
    // since: the copy made then (maybe edited) must not be overwritten.
    // The new result is recorded, so a retry still makes no third copy.
    if copy_taken(copy_id)? {
        copy_id = Uuid::now_v7();
    }
    Ok(Some(Change {
        note_id: copy_id,
        rev: next_rev(last_rev),
        title: conflict_copy_title(title),
        body: body.clone(),
        deleted: false,
        updated_at: now,
        conflict_of: Some(op.note_id()),
    }))
}

/// An op's result as both stores keep it (so that a retried push gets the
/// same answer): columns, not a JSON copy of the answer. The server's note
/// is kept for conflicts only.
#[derive(Debug, Clone)]
pub(super) struct OpRow {
    pub note_id: String,
    pub rev: i64,
    pub conflict: bool,
    pub conflict_copy_id: Option<String>,
    pub copy_rev: Option<i64>,
    /// The JSON of the server's note.
    pub server_note: Option<String>,
}

impl OpRow {
    /// The row keeping `result`, the answer to op `op_id`.
    pub fn of(op_id: &str, result: &OpResult) -> Result<Self> {
        let server_note = result
            .server_note
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("op result {op_id}: {e}")))?;
        Ok(Self {
            note_id: result.note_id.to_string(),
            rev: result.rev,
            conflict: result.status == OpStatus::Conflict,
            conflict_copy_id: result.conflict_copy_id.map(|u| u.to_string()),
            copy_rev: result.copy_rev,
            server_note,
        })
    }

    /// The answer to op `op_id` seen again: its first result, as a
    /// duplicate.
    pub fn duplicate(self, op_id: &str) -> Result<OpResult> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("op result {op_id}: {what}"));
        let uuid = |s: &str| Uuid::parse_str(s).map_err(|_| corrupt("an id is not a UUID"));
        Ok(OpResult {
            op_id: uuid(op_id)?,
            status: OpStatus::Duplicate,
            note_id: uuid(&self.note_id)?,
            rev: self.rev,
            original_status: Some(if self.conflict {
                OpStatus::Conflict
            } else {
                OpStatus::Applied
            }),
            conflict_copy_id: self.conflict_copy_id.as_deref().map(uuid).transpose()?,
            copy_rev: self.copy_rev,
            server_note: self
                .server_note
                .map(|json| serde_json::from_str(&json).map_err(|e| corrupt(&e.to_string())))
                .transpose()?,
        })
    }
}

/// A stored note id (or `conflict_of`) as a UUID.
pub(super) fn parse_note_id(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| StoreError::Corrupt(format!("note id {s:?}")))
}

/// A stored revocation reason; one this server does not know reads as a
/// plain revocation.
pub(super) fn reason_from_db(s: Option<String>) -> Option<Reason> {
    s.map(|s| match Reason::parse(&s) {
        Reason::Unknown => Reason::Revoked,
        r => r,
    })
}
