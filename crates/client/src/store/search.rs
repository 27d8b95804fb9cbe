//! Full-text search over titles and bodies: an FTS5 index in the same
//! database, kept by triggers in the same transaction as every save, delete
//! and applied change, so a note is findable the moment it is stored.
//!
//! The index holds no copy of the text (a contentless table with deletes):
//! it maps words to the rowids of `notes`, whose text is read from there.
//! A database from before search gets its index built by
//! [`LocalStore::index_step`], a batch at a time, while the app runs: the
//! triggers keep every note written meanwhile indexed, and a batch
//! re-indexes its range whole, so the two never disagree.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{LocalStore, NOTE_SELECT, Note, note_row};
use crate::error::Result;

pub(super) const MIGRATION: &str = r#"
CREATE VIRTUAL TABLE notes_search USING fts5(
    title, body, content = '', contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER notes_search_insert AFTER INSERT ON notes BEGIN
    INSERT INTO notes_search (rowid, title, body) VALUES (new.rowid, new.title, new.body);
END;
CREATE TRIGGER notes_search_update AFTER UPDATE OF title, body ON notes BEGIN
    DELETE FROM notes_search WHERE rowid = old.rowid;
    INSERT INTO notes_search (rowid, title, body) VALUES (new.rowid, new.title, new.body);
END;
CREATE TRIGGER notes_search_delete AFTER DELETE ON notes BEGIN
    DELETE FROM notes_search WHERE rowid = old.rowid;
END;
-- The notes already here are indexed by index_step, up to this rowid.
INSERT INTO meta (key, value) VALUES ('search_index_to', (SELECT coalesce(max(rowid), 0) FROM notes))
    ON CONFLICT (key) DO UPDATE SET value = excluded.value;
INSERT INTO meta (key, value) VALUES ('search_indexed', 0)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value;
"#;

/// How far building the index of an older database has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IndexProgress {
    /// Rows indexed so far, and in all (rowids, so roughly notes).
    pub done: i64,
    pub total: i64,
}

impl IndexProgress {
    pub fn complete(&self) -> bool {
        self.done >= self.total
    }
}

/// The FTS5 query for what a user typed: every word must appear, each as a
/// prefix (results as you type). Words are quoted, so no character the
/// user types is FTS5 syntax. `None` when there is no word.
fn match_expression(query: &str) -> Option<String> {
    // FTS5 strings end at a NUL; no word holds a control character anyway.
    let query: String = query
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let words: Vec<String> = query
        .split_whitespace()
        .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
        .collect();
    (!words.is_empty()).then(|| words.join(" AND "))
}

impl LocalStore {
    /// Live notes whose title or body holds every word of `query` (as a
    /// word or the start of one, case and accents ignored), most recently
    /// edited first, at most `limit`. An empty query finds nothing: the
    /// caller shows the whole list.
    pub fn search_notes(&self, query: &str, limit: usize) -> Result<Vec<Note>> {
        let Some(expression) = match_expression(query) else {
            return Ok(Vec::new());
        };
        // The newest hits are picked on (rowid, updated_at) alone, and only
        // they are read whole: sorting every hit with its body costs more
        // than the search itself when a short prefix matches most notes.
        let mut stmt = self.conn.prepare_cached(&format!(
            "WITH hits AS (SELECT rowid AS hit FROM notes WHERE rowid IN \
             (SELECT rowid FROM notes_search WHERE notes_search MATCH ?1) AND deleted = 0 \
             ORDER BY updated_at DESC, note_id LIMIT ?2) \
             {NOTE_SELECT} JOIN hits ON n.rowid = hits.hit ORDER BY n.updated_at DESC, n.note_id"
        ))?;
        let notes = stmt
            .query_map(params![expression, limit as i64], note_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(notes)
    }

    /// How far the index of the notes stored before search existed is
    /// built.
    pub fn index_progress(&self) -> Result<IndexProgress> {
        let get = |key: &str| -> Result<i64> {
            Ok(self
                .conn
                .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?
                .unwrap_or(0))
        };
        Ok(IndexProgress {
            done: get("search_indexed")?,
            total: get("search_index_to")?,
        })
    }

    /// Indexes the next `batch` rowids of the notes stored before search
    /// existed, in one transaction; returns the progress after it.
    pub fn index_step(&mut self, batch: i64) -> Result<IndexProgress> {
        let progress = self.index_progress()?;
        if progress.complete() {
            return Ok(progress);
        }
        let to = (progress.done + batch).min(progress.total);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Rows a trigger indexed meanwhile are indexed again, the same.
        tx.execute(
            "DELETE FROM notes_search WHERE rowid > ?1 AND rowid <= ?2",
            [progress.done, to],
        )?;
        tx.execute(
            "INSERT INTO notes_search (rowid, title, body) \
             SELECT rowid, title, body FROM notes WHERE rowid > ?1 AND rowid <= ?2",
            [progress.done, to],
        )?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'search_indexed'",
            [to],
        )?;
        tx.commit()?;
        Ok(IndexProgress {
            done: to,
            total: progress.total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_user_types_is_never_fts_syntax() {
        assert_eq!(match_expression("  "), None);
        assert_eq!(
            match_expression("plan Q3"),
            Some("\"plan\"* AND \"Q3\"*".into())
        );
        assert_eq!(
            match_expression("a\"b OR NOT*"),
            Some("\"a\"\"b\"* AND \"OR\"* AND \"NOT*\"*".into())
        );
    }
}

#[cfg(test)]
mod store_tests {
    use latchkey_protocol::{Change, PullResponse};
    use rusqlite::Connection;
    use uuid::Uuid;

    use super::*;
    use crate::store::MIGRATIONS;
    use crate::store::testing::store;

    fn titles(notes: Vec<Note>) -> Vec<String> {
        notes.into_iter().map(|n| n.title).collect()
    }

    #[test]
    fn finds_saved_and_pulled_notes_by_word_prefix_and_forgets_old_text() {
        let (_d, mut s) = store();
        let id = Uuid::now_v7();
        s.save_note(id, None, "Quarterly plan", "Budget for Zürich", 1)
            .unwrap();
        let pulled = Uuid::now_v7();
        s.apply_pull(&PullResponse {
            changes: vec![Change {
                note_id: pulled,
                rev: 1,
                title: "Groceries".into(),
                body: "apples, bread".into(),
                deleted: false,
                updated_at: 2,
                conflict_of: None,
            }],
            cursor: 1,
            more: false,
        })
        .unwrap();
        assert_eq!(
            titles(s.search_notes("quart", 50).unwrap()),
            ["Quarterly plan"]
        );
        assert_eq!(
            titles(s.search_notes("zurich", 50).unwrap()),
            ["Quarterly plan"]
        );
        assert_eq!(
            titles(s.search_notes("plan budg", 50).unwrap()),
            ["Quarterly plan"]
        );
        assert_eq!(titles(s.search_notes("bre", 50).unwrap()), ["Groceries"]);
        assert!(s.search_notes("plan apples", 50).unwrap().is_empty());

        s.save_note(id, None, "Quarterly plan", "Travel", 3)
            .unwrap();
        assert!(s.search_notes("budget", 50).unwrap().is_empty());
        assert_eq!(
            titles(s.search_notes("travel", 50).unwrap()),
            ["Quarterly plan"]
        );
        s.delete_note(id, 4).unwrap();
        assert!(s.search_notes("travel", 50).unwrap().is_empty());
    }

    #[test]
    fn any_typed_text_is_a_search_not_an_error() {
        let (_d, mut s) = store();
        s.save_note(
            Uuid::now_v7(),
            None,
            "C++ (notes)",
            "a \"quoted\" word; NEAR/2 * -x",
            1,
        )
        .unwrap();
        for q in [
            "\"",
            "*",
            "(",
            ")",
            "-",
            "NEAR",
            "AND OR NOT",
            "c++",
            "^",
            ":",
            "'",
            "\u{0}",
        ] {
            s.search_notes(q, 50)
                .unwrap_or_else(|e| panic!("query {q:?}: {e}"));
        }
        assert_eq!(s.search_notes("quoted", 50).unwrap().len(), 1);
        assert_eq!(s.search_notes("(notes", 50).unwrap().len(), 1);
    }

    #[test]
    fn an_older_database_gets_its_index_built_in_steps_while_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            for i in 0..25 {
                conn.execute(
                    "INSERT INTO notes (note_id, title, body, rev, updated_at) VALUES (?1, ?2, 'old body', 1, ?3)",
                    params![Uuid::now_v7().to_string(), format!("old {i}"), i],
                )
                .unwrap();
            }
        }
        let mut s = LocalStore::open(&path).unwrap();
        assert_eq!(
            s.index_progress().unwrap(),
            IndexProgress { done: 0, total: 25 }
        );
        assert!(s.search_notes("old", 100).unwrap().is_empty());
        // A note edited before the index reaches it is found, and stays
        // found once the step covering it runs.
        let first = s.list_notes().unwrap().pop().unwrap();
        s.save_note(first.id, None, "old 0", "edited", 100).unwrap();
        s.save_note(Uuid::now_v7(), None, "new", "body", 101)
            .unwrap();
        assert_eq!(s.search_notes("edited", 100).unwrap().len(), 1);
        let mut steps = 0;
        while !s.index_step(10).unwrap().complete() {
            steps += 1;
        }
        assert_eq!(steps, 2);
        assert_eq!(s.search_notes("old", 100).unwrap().len(), 25);
        assert_eq!(s.search_notes("edited", 100).unwrap().len(), 1);
        assert_eq!(s.search_notes("body", 100).unwrap().len(), 25);
        // Once built, opening again starts nothing.
        drop(s);
        let s = LocalStore::open(&path).unwrap();
        assert!(s.index_progress().unwrap().complete());
    }
}
