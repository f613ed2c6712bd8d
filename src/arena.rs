//! A bounded in-memory table of byte strings looked up by a prefix of each, their key. The
//! store's second cache tier keeps entities in compact form here (see `store::compact`), sized
//! to hold every entity of a large platform at a few dozen bytes each; the activity writer
//! keeps the ids of the names it interned (see `activity::names`).
//!
//! A general-purpose cache spends about 50 bytes per entry on its own bookkeeping and a heap
//! allocation per value, as much as the compact entity itself. Here the values are appended to
//! a ring of large segments per shard, and the shard's hash table holds 4 bytes per entry:
//! where the value lies (the table's own control bytes filter candidates by 7 bits of the hash,
//! and the key stored with the value settles it). When the newest segment is full the oldest is
//! emptied and its entries forgotten (first in, first out: over uniform access no policy does
//! better, and the resolved-entity cache in front of this one keeps what is hot). Replaced and
//! removed values stay in their segment until it is emptied.

use std::hash::BuildHasher;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::{DefaultHashBuilder, HashTable};

/// Shards, each with its own lock.
const SHARDS: usize = 16;
/// Segments in each shard's ring.
const SEGMENTS: usize = 8;
/// Where a value lies: the segment in the top bits, the offset in the rest.
const OFFSET_BITS: u32 = 28;

/// Where a value lies in its shard.
#[derive(Clone, Copy)]
struct Slot(u32);

impl Slot {
    fn segment(self) -> usize {
        (self.0 >> OFFSET_BITS) as usize
    }

    fn offset(self) -> usize {
        (self.0 & ((1 << OFFSET_BITS) - 1)) as usize
    }
}

#[derive(Default)]
struct Shard {
    table: HashTable<Slot>,
    segments: Vec<Vec<u8>>,
    newest: usize,
}

/// The table.
pub struct Arena {
    shards: Vec<RwLock<Shard>>,
    budget: u64,
    segment_bytes: usize,
    hasher: DefaultHashBuilder,
}

impl Arena {
    /// A table holding about `bytes` of values (and 5 bytes or so per entry besides).
    pub fn new(bytes: u64) -> Arena {
        let per_segment = bytes / (SHARDS * SEGMENTS) as u64;
        let segment_bytes = usize::try_from(per_segment)
            .unwrap_or(usize::MAX)
            .min(1 << OFFSET_BITS);
        Arena {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            budget: bytes,
            segment_bytes,
            hasher: DefaultHashBuilder::default(),
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(hash: u64) -> usize {
        // The table reads the low bits and the top 7; the shard takes bits from the middle.
        (hash >> 40) as usize % SHARDS
    }

    fn read(&self, shard: usize) -> RwLockReadGuard<'_, Shard> {
        self.shards[shard].read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, shard: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[shard]
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `f` with the value whose key is `key`, if one is kept.
    pub fn with<T>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        let hash = self.hash(key);
        let shard = self.read(Self::shard(hash));
        let slot = shard
            .table
            .find(hash, |s| entry(&shard.segments, *s).0 == key)?;
        Some(f(entry(&shard.segments, *slot).1))
    }

    /// Keeps `value`, whose first `key` bytes are its key, replacing the value with that key.
    /// A value larger than a segment is not kept (and the one it replaces is dropped).
    pub fn insert(&self, value: &[u8], key: usize) {
        let Some(prefix) = value.get(..key) else {
            return;
        };
        let hash = self.hash(prefix);
        let mut guard = self.write(Self::shard(hash));
        let Shard {
            table,
            segments,
            newest,
        } = &mut *guard;
        let mut header = Vec::with_capacity(8);
        varint(&mut header, value.len());
        varint(&mut header, key);
        let needed = header.len() + value.len();
        if needed > self.segment_bytes {
            if let Ok(found) = table.find_entry(hash, |s| entry(segments, *s).0 == prefix) {
                found.remove();
            }
            return;
        }
        if segments.is_empty() {
            *segments = (0..SEGMENTS).map(|_| Vec::new()).collect();
        }
        if segments[*newest].len() + needed > self.segment_bytes {
            // Empty the oldest segment and forget what it held.
            let oldest = (*newest + 1) % SEGMENTS;
            table.retain(|s| s.segment() != oldest);
            segments[oldest].clear();
            *newest = oldest;
        }
        let segment = &mut segments[*newest];
        if segment.capacity() == 0 {
            segment.reserve_exact(self.segment_bytes);
        }
        let slot = Slot(((*newest as u32) << OFFSET_BITS) | segment.len() as u32);
        segment.extend_from_slice(&header);
        segment.extend_from_slice(value);
        let hasher = &self.hasher;
        match table.find_mut(hash, |s| entry(segments, *s).0 == prefix) {
            Some(existing) => *existing = slot,
            None => {
                table.insert_unique(hash, slot, |s| hasher.hash_one(entry(segments, *s).0));
            }
        }
    }

    /// Forgets the value with this key.
    pub fn remove(&self, key: &[u8]) {
        let hash = self.hash(key);
        let mut guard = self.write(Self::shard(hash));
        let Shard {
            table, segments, ..
        } = &mut *guard;
        if let Ok(found) = table.find_entry(hash, |s| entry(segments, *s).0 == key) {
            found.remove();
        }
    }

    /// Forgets everything, and gives back the memory.
    pub fn clear(&self) {
        for s in 0..SHARDS {
            *self.write(s) = Shard::default();
        }
    }

    /// The bytes of values it was made to hold.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Values kept.
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|s| self.read(s).table.len()).sum()
    }
}

/// The key and the value stored at `slot`: the value's length and the key's (LEB128), then
/// the value, which starts with the key.
fn entry(segments: &[Vec<u8>], slot: Slot) -> (&[u8], &[u8]) {
    let Some(segment) = segments.get(slot.segment()) else {
        return (&[], &[]);
    };
    let at = slot.offset();
    let Some((len, used)) = segment.get(at..).and_then(read_varint) else {
        return (&[], &[]);
    };
    let at = at + used;
    let Some((key, used)) = segment.get(at..).and_then(read_varint) else {
        return (&[], &[]);
    };
    let at = at + used;
    let value = segment.get(at..at + len).unwrap_or_default();
    (value.get(..key).unwrap_or_default(), value)
}

/// The LEB128 number `bytes` starts with (see [`varint`]) and how many bytes it took; `None`
/// when it does not end within `bytes` or does not fit a `usize`.
pub(crate) fn read_varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut n = 0usize;
    for (i, b) in bytes
        .iter()
        .enumerate()
        .take(usize::BITS.div_ceil(7) as usize)
    {
        n |= usize::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some((n, i + 1));
        }
    }
    None
}

/// Appends `n` in LEB128 (7 bits a byte, low first, the top bit set on all but the last).
pub(crate) fn varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value `key || payload`, keyed by its first `k` bytes.
    fn value(key: &str, payload: &str) -> (Vec<u8>, usize) {
        (format!("{key}{payload}").into_bytes(), key.len())
    }

    fn get(arena: &Arena, key: &str) -> Option<String> {
        arena.with(key.as_bytes(), |v| String::from_utf8(v.to_vec()).unwrap())
    }

    #[test]
    fn varints_read_back_what_was_written() {
        for n in [0, 1, 127, 128, 300, 1 << 21, usize::MAX] {
            let mut bytes = Vec::new();
            varint(&mut bytes, n);
            let written = bytes.len();
            bytes.push(0x55);
            assert_eq!(read_varint(&bytes), Some((n, written)), "{n}");
            assert_eq!(read_varint(&bytes[..written - 1]), None, "{n} cut short");
        }
    }

    #[test]
    fn values_are_found_by_key_replaced_and_removed() {
        let arena = Arena::new(1 << 20);
        for i in 0..1000 {
            let (v, k) = value(&format!("k{i:04}"), &format!("=v{i}"));
            arena.insert(&v, k);
        }
        assert_eq!(arena.len(), 1000);
        assert_eq!(get(&arena, "k0007").as_deref(), Some("k0007=v7"));
        // Keys are whole: a prefix of a key is not that key.
        assert_eq!(get(&arena, "k000"), None);
        let (v, k) = value("k0007", "=new");
        arena.insert(&v, k);
        assert_eq!(get(&arena, "k0007").as_deref(), Some("k0007=new"));
        assert_eq!(arena.len(), 1000);
        arena.remove(b"k0007");
        assert_eq!(get(&arena, "k0007"), None);
        arena.clear();
        assert_eq!((arena.len(), get(&arena, "k0008")), (0, None));
    }

    #[test]
    fn the_oldest_values_go_first_when_full_and_the_bound_holds() {
        // 16 shards of 8 segments of 256 bytes.
        let arena = Arena::new(16 * 8 * 256);
        for i in 0..10_000 {
            let (v, k) = value(&format!("k{i:05}"), "-payload-of-some-length");
            arena.insert(&v, k);
        }
        // About 30 bytes an entry: at most 32 KiB of them, at least 7/8 of that.
        let kept = arena.len();
        assert!((800..=16 * 8 * 256 / 30).contains(&kept), "{kept}");
        assert!(get(&arena, "k09999").is_some());
        assert!(get(&arena, "k00000").is_none());
        // A value larger than a segment is not kept, and drops the one it would replace.
        let (big, k) = value("k09999", &"x".repeat(300));
        arena.insert(&big, k);
        assert_eq!(get(&arena, "k09999"), None);
    }
}
