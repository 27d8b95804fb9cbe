//! Sync request bodies as the app sends them (PROTOCOL.md), as JSON.

use serde_json::{Value, json};

/// An upsert op.
pub fn upsert(op_id: &str, note_id: &str, base_rev: i64, title: &str, body: &str) -> Value {
    json!({"op_id": op_id, "note_id": note_id, "base_rev": base_rev, "action": "upsert",
           "title": title, "body": body, "client_time": 1_764_400_000})
}

/// A delete op.
pub fn delete(op_id: &str, note_id: &str, base_rev: i64) -> Value {
    json!({"op_id": op_id, "note_id": note_id, "base_rev": base_rev, "action": "delete"})
}

/// A push body.
pub fn ops(ops: Vec<Value>) -> Value {
    json!({ "ops": ops })
}
