//! A Server-Sent Events parser (the WHATWG "event stream" format), fed
//! bytes as they arrive in chunks of any size, bounded in memory.
//!
//! Lines end in LF, CRLF or CR; a blank line dispatches the event; `:`
//! starts a comment (the server's pings); `data` lines join with LF; `id`
//! and `retry` are read and ignored (the engine reconnects on its own
//! backoff and asks for the cursor, not a replay). Written here rather than
//! taken from a crate because the engine needs only this, with a hard
//! bound on what a hostile server can make it hold.

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `message` when the server gave no `event` field.
    pub name: String,
    pub data: String,
}

/// The stream broke the format or the bound: the engine drops it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the event stream is malformed: {0}")]
pub struct SseError(&'static str);

/// At most this many bytes of one event (its lines together) are held.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// The parser's state between chunks.
#[derive(Debug, Default)]
pub struct Parser {
    /// The current line, without its end.
    line: Vec<u8>,
    /// The previous chunk ended in CR: an LF first in the next is its end.
    after_cr: bool,
    /// The first line has not begun: a BOM there is skipped.
    started: bool,
    name: String,
    data: String,
    has_data: bool,
    held: usize,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes; returns the events they completed, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut events = Vec::new();
        if !self.started && !bytes.is_empty() {
            // The BOM may come split across chunks; only a whole one at the
            // very start is skipped (a partial one is then just bytes).
            if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF".as_slice()) {
                bytes = rest;
            }
            self.started = true;
        }
        for &b in bytes {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line)? {
                        events.push(event);
                    }
                }
                _ => {
                    self.held += 1;
                    if self.held > MAX_EVENT_BYTES {
                        return Err(SseError("an event is over 64 KiB"));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(events)
    }

    fn line_done(&mut self, line: &[u8]) -> Result<Option<Event>, SseError> {
        if line.is_empty() {
            self.held = 0;
            let name = std::mem::take(&mut self.name);
            let data = std::mem::take(&mut self.data);
            if !std::mem::take(&mut self.has_data) {
                return Ok(None);
            }
            let name = if name.is_empty() {
                "message".to_owned()
            } else {
                name
            };
            return Ok(Some(Event { name, data }));
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError("a line is not UTF-8"))?;
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.name),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(chunks: &[&[u8]]) -> Result<Vec<Event>, SseError> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.feed(c)?);
        }
        Ok(out)
    }

    fn ev(name: &str, data: &str) -> Event {
        Event {
            name: name.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_pings_and_line_ends() {
        let wire = b"\xEF\xBB\xBF: ping\n\nevent: changed\ndata: {\"cursor\":7}\n\n\
                     event: revoked\r\ndata: {\"reason\":\"revoked\"}\r\n\r\n\
                     data:a\rdata:b\r\r: ping\n\nid: 3\nretry: 10\n\n";
        assert_eq!(
            all(&[wire]).unwrap(),
            [
                ev("changed", "{\"cursor\":7}"),
                ev("revoked", "{\"reason\":\"revoked\"}"),
                ev("message", "a\nb"),
            ]
        );
    }

    #[test]
    fn an_event_left_unfinished_is_not_dispatched() {
        assert_eq!(all(&[b"event: changed\ndata: 1\n"]).unwrap(), []);
    }

    #[test]
    fn a_hostile_stream_is_refused_not_held() {
        let long = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert!(all(&[b"data: ", &long]).is_err());
        assert!(all(&[b"data: \xff\xfe\n\n"]).is_err());
        // Many small lines of one event count together.
        let many = b"data: 0123456789\n".repeat(MAX_EVENT_BYTES / 10);
        assert!(all(&[&many]).is_err());
        // Pings forever are fine: nothing is held.
        let pings = b": ping\n\n".repeat(100_000);
        assert_eq!(all(&[&pings]).unwrap(), []);
    }

    proptest! {
        /// However the bytes are cut into chunks, the events are the same
        /// (and nothing panics on any input).
        #[test]
        fn chunking_never_changes_the_events(
            bytes in proptest::collection::vec(
                prop_oneof![
                    Just(b'\n'), Just(b'\r'), Just(b':'), Just(b' '),
                    Just(b'd'), Just(b'a'), Just(b't'), Just(b'e'), Just(b'v'), Just(b'n'),
                    any::<u8>(),
                ],
                0..400,
            ),
            cuts in proptest::collection::vec(0usize..400, 0..20),
        ) {
            let whole = all(&[&bytes]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort();
            let mut chunks = Vec::new();
            let mut at = 0;
            for c in cuts {
                chunks.push(&bytes[at..c]);
                at = c;
            }
            chunks.push(&bytes[at..]);
            // A BOM split across chunks is the one allowed difference.
            if !bytes.starts_with(b"\xEF") {
                prop_assert_eq!(whole, all(&chunks));
            }
        }
    }
}
