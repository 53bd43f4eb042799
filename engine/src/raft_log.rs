//! Glue between raft-rs and the rest of keel: the slog→tracing bridge and the persisted-record
//! codec (raft `Entry` and `HardState` to bytes and back) that the driver writes to the WAL.
//!
//! The codec is pure (bytes in, bytes out); the driver owns the disk.

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Message};

/// A persisted record that does not decode: the WAL's crc passed, so this is a bug or a
/// record from an incompatible version.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(String);

/// Encodes a raft entry for the WAL.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    entry
        .write_to_bytes()
        .unwrap_or_else(|e| panic!("encoding a raft entry in memory cannot fail: {e}"))
}

/// Encodes a raft entry for the WAL into `out` (appended), so a writer can reuse one buffer.
pub fn encode_entry_into(entry: &Entry, out: &mut Vec<u8>) {
    entry
        .write_to_vec(out)
        .unwrap_or_else(|e| panic!("encoding a raft entry in memory cannot fail: {e}"));
}

/// Decodes a raft entry read back from the WAL.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, CodecError> {
    let mut entry = Entry::default();
    entry
        .merge_from_bytes(bytes)
        .map_err(|e| CodecError(format!("raft entry does not decode: {e}")))?;
    Ok(entry)
}

/// Encodes a raft hard state (term, vote, commit) for the WAL.
pub fn encode_hard_state(hs: &HardState) -> Vec<u8> {
    hs.write_to_bytes()
        .unwrap_or_else(|e| panic!("encoding a hard state in memory cannot fail: {e}"))
}

/// Decodes a raft hard state read back from the WAL.
pub fn decode_hard_state(bytes: &[u8]) -> Result<HardState, CodecError> {
    let mut hs = HardState::default();
    hs.merge_from_bytes(bytes)
        .map_err(|e| CodecError(format!("raft hard state does not decode: {e}")))?;
    Ok(hs)
}

/// Encodes a raft configuration (a snapshot's `ConfState`) for the snapshot file.
pub fn encode_conf_state(cs: &ConfState) -> Vec<u8> {
    cs.write_to_bytes()
        .unwrap_or_else(|e| panic!("encoding a conf state in memory cannot fail: {e}"))
}

/// Decodes a raft configuration read back from a snapshot file.
pub fn decode_conf_state(bytes: &[u8]) -> Result<ConfState, CodecError> {
    let mut cs = ConfState::default();
    cs.merge_from_bytes(bytes)
        .map_err(|e| CodecError(format!("raft conf state does not decode: {e}")))?;
    Ok(cs)
}

/// Encodes a raft message for the peer transport.
pub fn encode_message(message: &Message) -> Vec<u8> {
    message
        .write_to_bytes()
        .unwrap_or_else(|e| panic!("encoding a raft message in memory cannot fail: {e}"))
}

/// Decodes a raft message received from a peer.
pub fn decode_message(bytes: &[u8]) -> Result<Message, CodecError> {
    let mut message = Message::default();
    message
        .merge_from_bytes(bytes)
        .map_err(|e| CodecError(format!("raft message does not decode: {e}")))?;
    Ok(message)
}

/// A slog drain that forwards raft-rs's log lines to `tracing`, under target `raft`.
pub(crate) struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<Self::Ok, Self::Err> {
        use slog::KV as _;
        let mut kv = KvText(String::new());
        // Formatting into a String cannot fail; ignore the impossible error.
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{msg}{}", kv.0)
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Info => tracing::debug!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Debug | slog::Level::Trace => {
                tracing::trace!(target: "raft", "{msg}{}", kv.0)
            }
        }
        Ok(())
    }
}

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

/// The logger handed to raft-rs.
pub(crate) fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_and_hard_state_round_trip() {
        let e = Entry {
            index: 7,
            term: 3,
            data: bytes::Bytes::from_static(b"payload"),
            ..Default::default()
        };
        let back = decode_entry(&encode_entry(&e)).expect("decodes");
        assert_eq!(back, e);

        let hs = HardState {
            term: 4,
            vote: 1,
            commit: 9,
            ..Default::default()
        };
        assert_eq!(
            decode_hard_state(&encode_hard_state(&hs)).expect("decodes"),
            hs
        );
        assert!(decode_entry(&[0xff, 0xff, 0xff]).is_err());
    }
}
