//! How a room state is cut into shared blocks (pure; no database).
//!
//! A state is a sorted map (event type NID, state key NID) → event NID. It is
//! stored as a snapshot: a list of blocks, each holding the entries whose key
//! hashes into that block's bucket. The number of buckets grows with the
//! state (about 128 entries a block), so a state event in a 10 000-member
//! room rewrites one ~80-entry block and the snapshot's short block list;
//! every other block is shared with the snapshot before it. Blocks and
//! snapshots are content-addressed (SHA-256 of their encoding), so equal
//! states and equal blocks are stored once.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// (event type NID, state key NID) → event NID.
pub(crate) type StateEntries = BTreeMap<(i64, i64), i64>;

/// Roughly how many entries a block holds.
const ENTRIES_PER_BLOCK: usize = 128;

/// How many hash bits choose a state's bucket, for a state of `len` entries.
pub(crate) fn bucket_bits(len: usize) -> u32 {
    let blocks = len.div_ceil(ENTRIES_PER_BLOCK).max(1);
    blocks.next_power_of_two().trailing_zeros().min(16)
}

fn bucket(key: (i64, i64), bits: u32) -> usize {
    if bits == 0 {
        return 0;
    }
    // splitmix64: a fixed, well-mixed hash, so buckets do not depend on the
    // order NIDs were handed out in.
    let mut z = (key.0 as u64).wrapping_shl(32) ^ (key.1 as u64);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> (64 - bits)) as usize
}

/// Splits a state into its blocks' encoded entries, one per bucket (empty
/// buckets included, so the list's length says how many bits were used).
pub(crate) fn split(entries: &StateEntries) -> Vec<Vec<u8>> {
    let bits = bucket_bits(entries.len());
    let mut buckets: Vec<Vec<(i64, i64, i64)>> = vec![Vec::new(); 1 << bits];
    for (&(kind, key), &event) in entries {
        buckets[bucket((kind, key), bits)].push((kind, key, event));
    }
    buckets.iter().map(|b| encode_entries(b)).collect()
}

/// A content address.
pub(crate) fn hash(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Entries as varints, sorted, each type NID as a delta from the previous.
pub(crate) fn encode_entries(entries: &[(i64, i64, i64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 8);
    let mut previous_kind = 0i64;
    for &(kind, key, event) in entries {
        put_varint(&mut out, (kind - previous_kind) as u64);
        put_varint(&mut out, key as u64);
        put_varint(&mut out, event as u64);
        previous_kind = kind;
    }
    out
}

pub(crate) fn decode_entries(bytes: &[u8]) -> Option<Vec<(i64, i64, i64)>> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut kind = 0i64;
    while at < bytes.len() {
        kind += get_varint(bytes, &mut at)? as i64;
        let key = get_varint(bytes, &mut at)? as i64;
        let event = get_varint(bytes, &mut at)? as i64;
        out.push((kind, key, event));
    }
    Some(out)
}

pub(crate) fn encode_nids(nids: &[i64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nids.len() * 3);
    for &nid in nids {
        put_varint(&mut out, nid as u64);
    }
    out
}

pub(crate) fn decode_nids(bytes: &[u8]) -> Option<Vec<i64>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        out.push(get_varint(bytes, &mut at)? as i64);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(members: i64) -> StateEntries {
        let mut state = StateEntries::new();
        for kind in 1..=5 {
            state.insert((kind, 1), kind);
        }
        for member in 0..members {
            state.insert((6, 100 + member), 1000 + member);
        }
        state
    }

    #[test]
    fn entries_round_trip() {
        let state = room(300);
        let mut decoded = StateEntries::new();
        for block in split(&state) {
            for (kind, key, event) in decode_entries(&block).expect("decodes") {
                decoded.insert((kind, key), event);
            }
        }
        assert_eq!(decoded, state);
        let nids = vec![1, 127, 128, 1 << 40];
        assert_eq!(decode_nids(&encode_nids(&nids)), Some(nids));
    }

    #[test]
    fn one_change_in_a_big_room_rewrites_one_block() {
        let before = room(10_000);
        let mut after = before.clone();
        after.insert((6, 100 + 4_242), 99_999);
        let (a, b) = (split(&before), split(&after));
        assert_eq!(a.len(), b.len());
        assert!(a.len() >= 64, "{} blocks", a.len());
        let changed = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert_eq!(changed, 1);
        let biggest = b.iter().map(Vec::len).max().unwrap_or(0);
        assert!(biggest < 4_096, "largest block {biggest} bytes");
    }

    #[test]
    fn truncated_bytes_do_not_decode() {
        assert_eq!(decode_entries(&[0x80]), None);
        assert_eq!(decode_nids(&[0xff, 0xff]), None);
    }
}
