//! One partition of the embedded log: an append-only file of framed records
//! plus an in-memory index from offset to byte position.
//!
//! File layout (all integers little-endian):
//!
//! ```text
//! file   := MAGIC frame*
//! frame  := body_len:u32 crc32(body):u32 body
//! body   := timestamp_ms:i64 key_len:u32 key header_count:u32 header* payload
//! header := name_len:u32 name(UTF-8) value_len:u32 value
//! ```
//!
//! The payload is the rest of the body, so it needs no length of its own. The
//! index keeps only one `u64` per record (its byte position), never payloads,
//! so memory stays small however large the log grows; reads are positional
//! (`pread`) and never move a shared cursor, so they need no lock while the
//! bytes are read.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use parking_lot::Mutex;

use crate::{LogError, OutgoingRecord, Record};

/// Identifies the file format, so a future format can be told apart.
const MAGIC: &[u8; 8] = b"GNGLOG\x00\x01";
const MAGIC_LEN: u64 = MAGIC.len() as u64;
/// `body_len` and `crc32`.
const FRAME_HEADER_LEN: usize = 8;
/// The largest body the log accepts; far above any Matrix event (64 KiB), and
/// small enough that a corrupt length can never make us allocate gigabytes.
pub(crate) const MAX_BODY_LEN: usize = 64 << 20;

/// Encodes `record` as one frame, ready to append.
pub(crate) fn encode(record: &OutgoingRecord, timestamp_ms: i64) -> Result<Vec<u8>, LogError> {
    let headers_len: usize = record
        .headers
        .iter()
        .map(|(name, value)| 8 + name.len() + value.len())
        .sum();
    let body_len = 8 + 4 + record.key.len() + 4 + headers_len + record.payload.len();
    if body_len > MAX_BODY_LEN {
        return Err(LogError::RecordTooLarge(body_len));
    }
    // Every length below is at most `body_len`, which fits in a u32.
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + body_len);
    frame.extend_from_slice(&(body_len as u32).to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&timestamp_ms.to_le_bytes());
    frame.extend_from_slice(&(record.key.len() as u32).to_le_bytes());
    frame.extend_from_slice(&record.key);
    frame.extend_from_slice(&(record.headers.len() as u32).to_le_bytes());
    for (name, value) in &record.headers {
        frame.extend_from_slice(&(name.len() as u32).to_le_bytes());
        frame.extend_from_slice(name.as_bytes());
        frame.extend_from_slice(&(value.len() as u32).to_le_bytes());
        frame.extend_from_slice(value);
    }
    frame.extend_from_slice(&record.payload);
    let crc = crc32fast::hash(&frame[FRAME_HEADER_LEN..]);
    frame[4..FRAME_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(frame)
}

/// Where a record sits, for decoding and error messages.
pub(crate) struct FrameAt<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub offset: u64,
    /// Byte position of the frame in its file.
    pub at: u64,
}

/// Decodes one whole frame (header included), checking its CRC.
pub(crate) fn decode(frame: &[u8], place: FrameAt<'_>) -> Result<Record, LogError> {
    let corrupt = || LogError::Corrupt {
        topic: place.topic.to_owned(),
        partition: place.partition,
        at: place.at,
    };
    let (header, body) = frame
        .split_at_checked(FRAME_HEADER_LEN)
        .ok_or_else(corrupt)?;
    let mut fields = Fields(header);
    let body_len = fields.u32().ok_or_else(corrupt)?;
    let crc = fields.u32().ok_or_else(corrupt)?;
    if body_len as usize != body.len() || crc32fast::hash(body) != crc {
        return Err(corrupt());
    }
    let mut fields = Fields(body);
    let timestamp_ms = fields.i64().ok_or_else(corrupt)?;
    let key = fields.sized().ok_or_else(corrupt)?.to_vec();
    let header_count = fields.u32().ok_or_else(corrupt)?;
    let mut headers = Vec::new();
    for _ in 0..header_count {
        let name = fields.sized().ok_or_else(corrupt)?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| corrupt())?;
        let value = fields.sized().ok_or_else(corrupt)?.to_vec();
        headers.push((name, value));
    }
    Ok(Record {
        topic: place.topic.to_owned(),
        partition: place.partition,
        offset: place.offset,
        key,
        headers,
        payload: fields.0.to_vec(),
        timestamp_ms,
    })
}

/// A cursor over a byte slice; `None` means the bytes ran out.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A `u32` length followed by that many bytes.
    fn sized(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()?;
        self.take(len as usize)
    }
}

/// One partition's file and index.
pub(crate) struct PartitionFile {
    file: File,
    index: Mutex<Index>,
    /// Taken by the one flush in progress: appenders that arrive meanwhile
    /// wait for it, then find their record covered or flush together.
    pub(crate) flushing: tokio::sync::Mutex<()>,
    /// The record count found on disk when the log was opened, for a
    /// partition that existed then (`u64::MAX` for one created since, which
    /// no earlier offset can name). An offset committed or stored past it
    /// was made before a crash that lost the records it counted (a power
    /// cut without fsync), so it cannot be trusted: the records now at
    /// those offsets are new.
    pub(crate) opened_end: u64,
}

struct Index {
    /// Byte position of each record's frame, by offset.
    positions: Vec<u64>,
    /// Byte position where the next frame goes.
    end: u64,
    /// Records below this offset may be read. Equals `positions.len()` unless
    /// fsync is on, where a record becomes visible only once it is on disk, so
    /// no consumer can act on (and commit past) a record a power cut would lose.
    visible: u64,
}

/// What opening a partition found.
pub(crate) struct Opened {
    pub partition: PartitionFile,
    /// Bytes cut from a torn or corrupt tail, if any.
    pub truncated_bytes: u64,
}

impl PartitionFile {
    /// Opens (creating if needed) the file at `path`, indexes its records and
    /// cuts a torn tail: a frame that runs past the end of the file or fails
    /// its CRC, and everything after it, as a crash mid-write leaves behind.
    pub(crate) fn open(
        path: &Path,
        topic: &str,
        partition: u32,
        fsync: bool,
    ) -> Result<Opened, LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        let existed = len >= MAGIC_LEN;
        let (positions, valid_end) = if len < MAGIC_LEN {
            // New, or a crash before the magic was complete: nothing to keep.
            file.set_len(0)?;
            file.write_all_at(MAGIC, 0)?;
            (Vec::new(), MAGIC_LEN)
        } else {
            let mut magic = [0; MAGIC.len()];
            file.read_exact_at(&mut magic, 0)?;
            if &magic != MAGIC {
                return Err(LogError::Corrupt {
                    topic: topic.to_owned(),
                    partition,
                    at: 0,
                });
            }
            scan(&file, len)?
        };
        let truncated_bytes = len.saturating_sub(valid_end);
        if truncated_bytes > 0 {
            file.set_len(valid_end)?;
        }
        if fsync {
            file.sync_all()?;
        }
        let visible = positions.len() as u64;
        Ok(Opened {
            partition: PartitionFile {
                file,
                index: Mutex::new(Index {
                    positions,
                    end: valid_end,
                    visible,
                }),
                flushing: tokio::sync::Mutex::new(()),
                opened_end: if existed { visible } else { u64::MAX },
            },
            truncated_bytes,
        })
    }

    /// Appends an encoded frame and returns its offset. The bytes reach the
    /// page cache (surviving a process kill, not a power cut) before the
    /// offset is handed out; with fsync on the record stays invisible until
    /// [`PartitionFile::sync`] and [`PartitionFile::publish`] ran.
    pub(crate) fn append(&self, frame: &[u8], visible_now: bool) -> Result<u64, LogError> {
        let mut index = self.index.lock();
        let at = index.end;
        // A failed or partial write leaves `end` where it was: the next append
        // overwrites the partial bytes, and a reopen cuts them as a torn tail.
        self.file.write_all_at(frame, at)?;
        let offset = index.positions.len() as u64;
        index.positions.push(at);
        index.end = at + frame.len() as u64;
        if visible_now {
            index.visible = offset + 1;
        }
        Ok(offset)
    }

    /// Flushes everything appended so far to disk.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Makes records up to `offset` visible (after a [`PartitionFile::sync`]
    /// that covered them: a sync covers every earlier append too).
    pub(crate) fn publish(&self, offset: u64) {
        let mut index = self.index.lock();
        index.visible = index.visible.max(offset + 1);
    }

    /// The offset the next appended record will get (visible or not).
    pub(crate) fn appended(&self) -> u64 {
        self.index.lock().positions.len() as u64
    }

    /// The offset the next record will get, as consumers see it.
    pub(crate) fn high_watermark(&self) -> u64 {
        self.index.lock().visible
    }

    /// Reads the record at `offset`, or `None` if it is not (yet) visible.
    pub(crate) fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<Option<Record>, LogError> {
        let (at, end) = {
            let index = self.index.lock();
            if offset >= index.visible {
                return Ok(None);
            }
            let Some(&at) = usize::try_from(offset)
                .ok()
                .and_then(|i| index.positions.get(i))
            else {
                return Ok(None);
            };
            let end = usize::try_from(offset + 1)
                .ok()
                .and_then(|i| index.positions.get(i))
                .copied()
                .unwrap_or(index.end);
            (at, end)
        };
        // A bad index yields a short frame, which decodes as corrupt.
        let mut frame = vec![0; end.saturating_sub(at) as usize];
        self.file.read_exact_at(&mut frame, at)?;
        decode(
            &frame,
            FrameAt {
                topic,
                partition,
                offset,
                at,
            },
        )
        .map(Some)
    }
}

/// Walks the frames after the magic; returns their positions and where the
/// valid part of the file ends.
fn scan(file: &File, len: u64) -> Result<(Vec<u64>, u64), LogError> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut skip = [0; MAGIC.len()];
    reader.read_exact(&mut skip)?;
    let mut positions = Vec::new();
    let mut body = Vec::new();
    let mut at = MAGIC_LEN;
    loop {
        let remaining = len - at;
        if remaining < FRAME_HEADER_LEN as u64 {
            // Clean end (0) or a torn frame header.
            return Ok((positions, at));
        }
        let mut header = [0; FRAME_HEADER_LEN];
        reader.read_exact(&mut header)?;
        let mut fields = Fields(&header);
        let (Some(body_len), Some(crc)) = (fields.u32(), fields.u32()) else {
            return Ok((positions, at));
        };
        let body_len = body_len as usize;
        if body_len > MAX_BODY_LEN || body_len as u64 > remaining - FRAME_HEADER_LEN as u64 {
            return Ok((positions, at));
        }
        body.resize(body_len, 0);
        reader.read_exact(&mut body)?;
        if crc32fast::hash(&body) != crc {
            return Ok((positions, at));
        }
        positions.push(at);
        at += (FRAME_HEADER_LEN + body_len) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OutgoingRecord {
        OutgoingRecord {
            key: b"!room:example.org".to_vec(),
            headers: vec![("traceparent".to_owned(), b"00-ab-cd-01".to_vec())],
            payload: b"{\"type\":\"m.room.message\"}".to_vec(),
        }
    }

    /// The on-disk format is persisted data: it must never change silently.
    #[test]
    fn frame_format_is_stable() {
        let record = OutgoingRecord {
            key: b"k".to_vec(),
            headers: vec![("h".to_owned(), b"v".to_vec())],
            payload: b"p".to_vec(),
        };
        let frame = encode(&record, 0x0102_0304_0506_0708).unwrap();
        let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "1c000000\
             80d466b4\
             0807060504030201\
             01000000 6b\
             01000000 01000000 68 01000000 76\
             70"
            .replace(' ', "")
        );
    }

    #[test]
    fn decode_reverses_encode_and_rejects_bit_flips() {
        let frame = encode(&sample(), 42).unwrap();
        let place = || FrameAt {
            topic: "t",
            partition: 3,
            offset: 7,
            at: 8,
        };
        let record = decode(&frame, place()).unwrap();
        assert_eq!(record.key, sample().key);
        assert_eq!(record.headers, sample().headers);
        assert_eq!(record.payload, sample().payload);
        assert_eq!(record.timestamp_ms, 42);
        assert_eq!(record.position().offset, 7);

        let mut flipped = frame.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            decode(&flipped, place()),
            Err(LogError::Corrupt { at: 8, .. })
        ));
        assert!(decode(&frame[..5], place()).is_err());
    }

    #[test]
    fn oversized_records_are_refused() {
        let record = OutgoingRecord {
            payload: vec![0; MAX_BODY_LEN + 1],
            ..OutgoingRecord::default()
        };
        assert!(matches!(
            encode(&record, 0),
            Err(LogError::RecordTooLarge(_))
        ));
    }

    #[test]
    fn torn_tail_is_cut_on_reopen_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let frame = encode(&sample(), 1).unwrap();
        {
            let opened = PartitionFile::open(&path, "t", 0, false).unwrap();
            for _ in 0..3 {
                opened.partition.append(&frame, true).unwrap();
            }
        }
        // Cut the third record in half, as a crash mid-write would.
        let full = std::fs::metadata(&path).unwrap().len();
        let torn = full - frame.len() as u64 / 2;
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(torn)
            .unwrap();

        let opened = PartitionFile::open(&path, "t", 0, false).unwrap();
        assert_eq!(opened.truncated_bytes, torn - (full - frame.len() as u64));
        let partition = opened.partition;
        assert_eq!(partition.high_watermark(), 2);
        assert!(partition.read("t", 0, 2).unwrap().is_none());
        assert_eq!(partition.append(&frame, true).unwrap(), 2);
        for offset in 0..3 {
            let record = partition.read("t", 0, offset).unwrap().unwrap();
            assert_eq!(record.payload, sample().payload);
        }
        drop(partition);
        let reopened = PartitionFile::open(&path, "t", 0, false).unwrap();
        assert_eq!(reopened.truncated_bytes, 0);
        assert_eq!(reopened.partition.high_watermark(), 3);
    }

    #[test]
    fn crc_failing_tail_is_cut_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let frame = encode(&sample(), 1).unwrap();
        {
            let opened = PartitionFile::open(&path, "t", 0, false).unwrap();
            opened.partition.append(&frame, true).unwrap();
            opened.partition.append(&frame, true).unwrap();
        }
        // Garble the last byte of the second record (same length, bad CRC).
        let len = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"?", len - 1).unwrap();
        drop(file);

        let opened = PartitionFile::open(&path, "t", 0, false).unwrap();
        assert_eq!(opened.truncated_bytes, frame.len() as u64);
        assert_eq!(opened.partition.high_watermark(), 1);
    }

    #[test]
    fn a_file_that_is_not_a_partition_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, b"not a ganglion log at all").unwrap();
        assert!(matches!(
            PartitionFile::open(&path, "t", 0, false),
            Err(LogError::Corrupt { at: 0, .. })
        ));
    }

    #[test]
    fn fsync_mode_hides_records_until_published() {
        let dir = tempfile::tempdir().unwrap();
        let opened = PartitionFile::open(&dir.path().join("0.log"), "t", 0, true).unwrap();
        let partition = opened.partition;
        let frame = encode(&sample(), 1).unwrap();
        let offset = partition.append(&frame, false).unwrap();
        assert!(partition.read("t", 0, offset).unwrap().is_none());
        partition.sync().unwrap();
        partition.publish(offset);
        assert!(partition.read("t", 0, offset).unwrap().is_some());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::{FRAME_HEADER_LEN, FrameAt, decode, encode};
    use crate::OutgoingRecord;

    fn place() -> FrameAt<'static> {
        FrameAt {
            topic: "t",
            partition: 0,
            offset: 0,
            at: 0,
        }
    }

    proptest! {
        /// Every record written reads back as it was.
        #[test]
        fn records_round_trip(
            key in proptest::collection::vec(any::<u8>(), 0..64),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            headers in proptest::collection::vec((".{0,12}", proptest::collection::vec(any::<u8>(), 0..32)), 0..4),
            timestamp_ms in any::<i64>(),
        ) {
            let record = OutgoingRecord { key, headers, payload };
            let frame = encode(&record, timestamp_ms).expect("encodes");
            let read = decode(&frame, place()).expect("decodes");
            prop_assert_eq!(read.key, record.key);
            prop_assert_eq!(read.headers, record.headers);
            prop_assert_eq!(read.payload, record.payload);
            prop_assert_eq!(read.timestamp_ms, timestamp_ms);
        }

        /// Whatever bytes a file holds, reading them is an error or a
        /// record, never a panic or a huge allocation.
        #[test]
        fn any_bytes_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes, place());
        }

        /// Bodies that pass the CRC (a bug, or bytes written by another
        /// version) still never make the parser panic.
        #[test]
        fn any_body_with_a_valid_crc_decodes_or_fails(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
            frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
            frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            frame.extend_from_slice(&body);
            let _ = decode(&frame, place());
        }
    }
}
