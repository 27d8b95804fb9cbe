//! The trash: the last text of every note deleted on this device or by
//! another one, kept for [`TRASH_KEEP_SECS`], restorable.
//!
//! A trigger fills it whenever a note turns into a tombstone, whatever did
//! it (a delete here, a pulled delete, a push answer), and empties a note's
//! entry whenever the note is live again (restored here, or an edit from
//! another device that won over the delete). The trash is this device's:
//! emptying it touches no other device; restoring is an ordinary upsert on
//! the tombstone's rev, which brings the note back everywhere.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{LocalStore, uuid};
use crate::error::{Error, Result};

/// Thirty days: a trashed note older than this is removed for good.
pub const TRASH_KEEP_SECS: i64 = 30 * 24 * 3600;

pub(super) const MIGRATION: &str = r#"
CREATE TABLE trash (
    note_id     TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL,
    conflict_of TEXT,
    deleted_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX trash_deleted_at ON trash(deleted_at);
-- A tombstone's updated_at is when it was deleted (here, or on the server).
-- An empty note is not worth keeping.
CREATE TRIGGER notes_trash_keep AFTER UPDATE OF deleted ON notes
WHEN old.deleted = 0 AND new.deleted = 1 AND (old.title <> '' OR old.body <> '')
BEGIN
    INSERT OR REPLACE INTO trash (note_id, title, body, conflict_of, deleted_at)
    VALUES (old.note_id, old.title, old.body, old.conflict_of, new.updated_at);
END;
CREATE TRIGGER notes_trash_back AFTER UPDATE OF deleted ON notes
WHEN new.deleted = 0
BEGIN
    DELETE FROM trash WHERE note_id = new.note_id;
END;
CREATE TRIGGER notes_trash_new AFTER INSERT ON notes
WHEN new.deleted = 0
BEGIN
    DELETE FROM trash WHERE note_id = new.note_id;
END;
"#;

/// A note in the trash, as it was when deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrashedNote {
    pub id: Uuid,
    pub title: String,
    pub body: String,
    pub conflict_of: Option<Uuid>,
    pub deleted_at: i64,
}

/// Keeps a live note's text in the trash before its row is deleted (a note
/// the server never saw), which the triggers do not see.
pub(super) fn keep(tx: &rusqlite::Transaction<'_>, note_key: &str, now: i64) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO trash (note_id, title, body, conflict_of, deleted_at) \
         SELECT note_id, title, body, conflict_of, ?2 FROM notes \
         WHERE note_id = ?1 AND deleted = 0 AND (title <> '' OR body <> '')",
    )?
    .execute(params![note_key, now])?;
    Ok(())
}

impl LocalStore {
    /// The trash, most recently deleted first.
    pub fn list_trash(&self) -> Result<Vec<TrashedNote>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT note_id, title, body, conflict_of, deleted_at FROM trash \
             ORDER BY deleted_at DESC, note_id",
        )?;
        let notes = stmt
            .query_map([], |r| {
                Ok(TrashedNote {
                    id: uuid(&r.get::<_, String>(0)?)?,
                    title: r.get(1)?,
                    body: r.get(2)?,
                    conflict_of: r
                        .get::<_, Option<String>>(3)?
                        .as_deref()
                        .map(uuid)
                        .transpose()?,
                    deleted_at: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(notes)
    }

    /// Brings a trashed note back with the text it had, durably and queued
    /// like any save: on the server an upsert on the tombstone's rev, so the
    /// note comes back on every device. If another device edited it
    /// meanwhile, the push keeps both texts, as for any conflict.
    pub fn restore_from_trash(&mut self, id: Uuid, now: i64) -> Result<super::Note> {
        let key = id.to_string();
        let trashed: Option<(String, String)> = self
            .conn
            .prepare_cached("SELECT title, body FROM trash WHERE note_id = ?1")?
            .query_row([&key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((title, body)) = trashed else {
            return Err(Error::NoteNotFound);
        };
        // The save's trigger takes the note out of the trash.
        self.save_note(id, None, &title, &body, now)
    }

    /// Removes every note from this device's trash; returns how many.
    pub fn empty_trash(&mut self) -> Result<usize> {
        Ok(self.conn.execute("DELETE FROM trash", [])?)
    }

    /// Removes the notes trashed before `now - TRASH_KEEP_SECS`.
    pub fn expire_trash(&mut self, now: i64) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM trash WHERE deleted_at < ?1",
            [now - TRASH_KEEP_SECS],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use latchkey_protocol::{Change, PullResponse};
    use uuid::Uuid;

    use super::*;
    use crate::store::testing::{applied, store};

    /// Saves a note and acknowledges it at `rev`, as a sync would.
    fn synced(s: &mut LocalStore, title: &str, body: &str, rev: i64) -> Uuid {
        let id = Uuid::now_v7();
        s.save_note(id, None, title, body, 10).unwrap();
        let ops = s.next_batch(10).unwrap();
        let results: Vec<_> = ops.iter().map(|op| applied(op, rev)).collect();
        s.apply_push(&results).unwrap();
        id
    }

    fn page(changes: Vec<Change>) -> PullResponse {
        let cursor = changes.iter().map(|c| c.rev).max().unwrap_or(0);
        PullResponse {
            changes,
            cursor,
            more: false,
        }
    }

    fn change(id: Uuid, rev: i64, title: &str, body: &str, deleted: bool) -> Change {
        Change {
            note_id: id,
            rev,
            title: title.into(),
            body: body.into(),
            deleted,
            updated_at: 50,
            conflict_of: None,
        }
    }

    #[test]
    fn a_delete_here_or_from_another_device_keeps_the_last_text_in_the_trash() {
        let (_d, mut s) = store();
        let mine = synced(&mut s, "Mine", "my text", 1);
        let theirs = synced(&mut s, "Theirs", "their text", 2);
        let never_synced = Uuid::now_v7();
        s.save_note(never_synced, None, "Draft", "draft text", 11)
            .unwrap();

        s.delete_note(mine, 20).unwrap();
        s.delete_note(never_synced, 21).unwrap();
        s.apply_pull(&page(vec![change(theirs, 3, "", "", true)]))
            .unwrap();

        let trash = s.list_trash().unwrap();
        let seen: Vec<(&str, &str, i64)> = trash
            .iter()
            .map(|t| (t.title.as_str(), t.body.as_str(), t.deleted_at))
            .collect();
        assert_eq!(
            seen,
            [
                ("Theirs", "their text", 50),
                ("Draft", "draft text", 21),
                ("Mine", "my text", 20)
            ]
        );
        assert!(s.list_notes().unwrap().is_empty());
    }

    #[test]
    fn restore_is_an_upsert_on_the_tombstone_and_leaves_the_trash() {
        let (_d, mut s) = store();
        let id = synced(&mut s, "Plan", "steps", 4);
        s.delete_note(id, 20).unwrap();
        // The delete went out and was applied at rev 5.
        let sent = s.next_batch(10).unwrap();
        assert!(matches!(
            sent[..],
            [latchkey_protocol::Op::Delete { base_rev: 4, .. }]
        ));
        s.apply_push(&[applied(&sent[0], 5)]).unwrap();

        let note = s.restore_from_trash(id, 30).unwrap();
        assert_eq!((note.title.as_str(), note.body.as_str()), ("Plan", "steps"));
        assert!(note.pending);
        assert!(s.list_trash().unwrap().is_empty());
        let ops = s.next_batch(10).unwrap();
        match &ops[..] {
            [
                latchkey_protocol::Op::Upsert {
                    note_id,
                    base_rev,
                    title,
                    body,
                    ..
                },
            ] => {
                assert_eq!((*note_id, *base_rev), (id, 5));
                assert_eq!((title.as_str(), body.as_str()), ("Plan", "steps"));
            }
            other => panic!("expected one upsert, got {other:?}"),
        }
        assert_eq!(
            s.restore_from_trash(id, 31).unwrap_err(),
            Error::NoteNotFound
        );
    }

    #[test]
    fn restoring_an_offline_delete_before_it_syncs_queues_the_text_again() {
        let (_d, mut s) = store();
        let id = synced(&mut s, "Plan", "steps", 4);
        s.delete_note(id, 20).unwrap();
        s.restore_from_trash(id, 21).unwrap();
        let ops = s.next_batch(10).unwrap();
        assert!(
            matches!(&ops[..], [latchkey_protocol::Op::Upsert { base_rev: 4, title, .. }] if title == "Plan")
        );
        // A note never synced comes back as new.
        let draft = Uuid::now_v7();
        s.save_note(draft, None, "Draft", "x", 22).unwrap();
        s.delete_note(draft, 23).unwrap();
        assert_eq!(s.restore_from_trash(draft, 24).unwrap().rev, 0);
        assert_eq!(s.list_notes().unwrap().len(), 2);
    }

    #[test]
    fn an_edit_from_another_device_takes_the_note_out_of_the_trash() {
        let (_d, mut s) = store();
        let id = synced(&mut s, "Plan", "steps", 4);
        s.apply_pull(&page(vec![change(id, 5, "", "", true)]))
            .unwrap();
        assert_eq!(s.list_trash().unwrap().len(), 1);
        s.apply_pull(&page(vec![change(
            id,
            6,
            "Plan",
            "edited elsewhere",
            false,
        )]))
        .unwrap();
        assert!(s.list_trash().unwrap().is_empty());
        assert_eq!(s.get_note(id).unwrap().body, "edited elsewhere");
    }

    #[test]
    fn the_trash_keeps_thirty_days_and_empties_on_request() {
        let (_d, mut s) = store();
        let old = synced(&mut s, "Old", "a", 1);
        let recent = synced(&mut s, "Recent", "b", 2);
        s.delete_note(old, 1_000).unwrap();
        s.delete_note(recent, 1_000 + TRASH_KEEP_SECS).unwrap();
        assert_eq!(s.expire_trash(1_001 + TRASH_KEEP_SECS).unwrap(), 1);
        let left: Vec<String> = s
            .list_trash()
            .unwrap()
            .into_iter()
            .map(|t| t.title)
            .collect();
        assert_eq!(left, ["Recent"]);
        assert_eq!(s.empty_trash().unwrap(), 1);
        assert!(s.list_trash().unwrap().is_empty());
        // Emptying the trash queues nothing: the deletes already are.
        assert!(
            s.next_batch(10)
                .unwrap()
                .iter()
                .all(|op| matches!(op, latchkey_protocol::Op::Delete { .. }))
        );
    }
}
