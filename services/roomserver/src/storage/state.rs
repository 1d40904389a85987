//! State snapshots: integer IDs for event types and state keys, shared
//! content-addressed blocks (see `state_blocks.rs`), and the caches that make
//! reading them cheap (blocks and snapshots never change once written).

use ganglion_base::sql;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ganglion_base::sql::Transaction;

use super::{Storage, StorageError};
use crate::state_blocks::{self, StateEntries};

pub(crate) use ganglion_base::bounded::Bounded;

/// A decoded block: (type NID, state key NID, event NID), sorted.
type BlockEntries = Arc<Vec<(i64, i64, i64)>>;

/// Names ↔ NIDs for event types and state keys: bounded, as the names
/// come from other servers' events.
pub(crate) struct Names {
    by_name: Bounded<String, i64>,
    by_nid: Bounded<i64, String>,
}

impl Names {
    pub(crate) fn new(capacity: usize) -> Names {
        Names {
            by_name: Bounded::new(capacity),
            by_nid: Bounded::new(capacity),
        }
    }

    fn insert(&mut self, name: String, nid: i64) {
        // The two directions stay in step: emptying one empties both.
        if self.by_nid.insert(nid, name.clone()) | self.by_name.insert(name.clone(), nid) {
            self.by_name.clear();
            self.by_nid.clear();
            self.by_nid.insert(nid, name.clone());
            self.by_name.insert(name, nid);
        }
    }
}

/// What the roomserver's storage remembers between queries.
pub(crate) struct Caches {
    pub(crate) types: Mutex<Names>,
    pub(crate) keys: Mutex<Names>,
    blocks: Mutex<Bounded<i64, BlockEntries>>,
    block_by_hash: Mutex<Bounded<Vec<u8>, i64>>,
    snapshots: Mutex<Bounded<i64, Arc<Vec<i64>>>>,
}

impl Caches {
    pub(crate) fn new(names_cached: usize) -> Self {
        Caches {
            types: Mutex::new(Names::new(names_cached)),
            keys: Mutex::new(Names::new(names_cached)),
            blocks: Mutex::new(Bounded::new(100_000)),
            block_by_hash: Mutex::new(Bounded::new(100_000)),
            snapshots: Mutex::new(Bounded::new(10_000)),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A state as NIDs, with the snapshot that stores it once written.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct NidState {
    pub(crate) entries: StateEntries,
    /// Set while `entries` is exactly what this snapshot holds.
    pub(crate) snapshot_nid: Option<i64>,
}

impl NidState {
    pub(crate) fn set(&mut self, kind: i64, key: i64, event: i64) {
        if self.entries.insert((kind, key), event) != Some(event) {
            self.snapshot_nid = None;
        }
    }
}

/// One of the two name tables (event types, state keys) with its cache.
struct NameTable<'a> {
    cache: &'a Mutex<Names>,
    table: &'static str,
    nid_column: &'static str,
    name_column: &'static str,
}

/// Blocks or snapshots written per statement (three values a row).
const HASHED_ROWS: usize = 100;

/// Names interned per statement (well under both engines' bind limits).
const INTERNED_PER_STATEMENT: usize = 500;

/// Cache entries learnt inside a transaction: remembered only once it commits.
#[derive(Default)]
pub(crate) struct Learnt {
    pub(crate) types: Vec<(String, i64)>,
    pub(crate) keys: Vec<(String, i64)>,
    blocks: Vec<(Vec<u8>, i64)>,
    /// Snapshots first written in this transaction (invisible outside it).
    pub(crate) snapshots: Vec<(i64, StateEntries)>,
}

impl Storage {
    /// The entries of a snapshot (0 is the empty state).
    pub(crate) async fn snapshot(&self, snapshot_nid: i64) -> Result<NidState, StorageError> {
        let mut state = NidState {
            entries: StateEntries::new(),
            snapshot_nid: Some(snapshot_nid),
        };
        if snapshot_nid == 0 {
            return Ok(state);
        }
        let cached = lock(&self.caches.snapshots).get(&snapshot_nid);
        let blocks = match cached {
            Some(blocks) => blocks,
            None => {
                let bytes: Vec<u8> = sql::query_scalar(
                    "SELECT block_nids FROM state_snapshots WHERE snapshot_nid = $1",
                )
                .bind(snapshot_nid)
                .fetch_optional(&self.db.pool)
                .await?
                .ok_or_else(|| StorageError::Corrupt(format!("snapshot {snapshot_nid}")))?;
                let blocks =
                    Arc::new(state_blocks::decode_nids(&bytes).ok_or_else(|| {
                        StorageError::Corrupt(format!("snapshot {snapshot_nid}"))
                    })?);
                lock(&self.caches.snapshots).insert(snapshot_nid, blocks.clone());
                blocks
            }
        };
        for &block_nid in blocks.iter() {
            if block_nid == 0 {
                continue;
            }
            let cached = lock(&self.caches.blocks).get(&block_nid);
            let entries = match cached {
                Some(entries) => entries,
                None => {
                    let bytes: Vec<u8> =
                        sql::query_scalar("SELECT entries FROM state_blocks WHERE block_nid = $1")
                            .bind(block_nid)
                            .fetch_optional(&self.db.pool)
                            .await?
                            .ok_or_else(|| StorageError::Corrupt(format!("block {block_nid}")))?;
                    let entries = Arc::new(
                        state_blocks::decode_entries(&bytes)
                            .ok_or_else(|| StorageError::Corrupt(format!("block {block_nid}")))?,
                    );
                    lock(&self.caches.blocks).insert(block_nid, entries.clone());
                    entries
                }
            };
            for &(kind, key, event) in entries.iter() {
                state.entries.insert((kind, key), event);
            }
        }
        Ok(state)
    }

    /// The names of type and state key NIDs, loading those not cached.
    pub(crate) async fn names(
        &self,
        type_nids: &[i64],
        key_nids: &[i64],
    ) -> Result<(HashMap<i64, String>, HashMap<i64, String>), StorageError> {
        let types = self.names_of(self.name_table(true), type_nids).await?;
        let keys = self.names_of(self.name_table(false), key_nids).await?;
        Ok((types, keys))
    }

    /// The event types or state keys a name table holds, or holds
    /// in this transaction, by name.
    fn name_table(&self, is_type: bool) -> NameTable<'_> {
        if is_type {
            NameTable {
                cache: &self.caches.types,
                table: "event_types",
                nid_column: "event_type_nid",
                name_column: "event_type",
            }
        } else {
            NameTable {
                cache: &self.caches.keys,
                table: "event_state_keys",
                nid_column: "state_key_nid",
                name_column: "state_key",
            }
        }
    }

    async fn names_of(
        &self,
        names: NameTable<'_>,
        nids: &[i64],
    ) -> Result<HashMap<i64, String>, StorageError> {
        let NameTable {
            cache,
            table,
            nid_column,
            name_column,
        } = names;
        let mut found = HashMap::with_capacity(nids.len());
        let mut missing = Vec::new();
        {
            let names = lock(cache);
            for nid in nids {
                match names.by_nid.peek(nid) {
                    Some(name) => {
                        found.insert(*nid, name.clone());
                    }
                    None => missing.push(*nid),
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        for chunk in missing.chunks(500) {
            let list = chunk
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            // NIDs are integers we produced, never user input.
            let sql = format!(
                "SELECT {nid_column}, {name_column} FROM {table} WHERE {nid_column} IN ({list})"
            );
            let rows = sql::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&self.db.pool)
                .await?;
            let mut names = lock(cache);
            for row in rows {
                let nid: i64 = row.try_get(0)?;
                let name: String = row.try_get(1)?;
                names.insert(name.clone(), nid);
                found.insert(nid, name);
            }
        }
        Ok(found)
    }

    /// The NIDs of event types and state keys that exist (no new ones).
    #[cfg(test)]
    pub(crate) async fn known_nid(
        &self,
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let kind = self.known_name(self.name_table(true), event_type).await?;
        let key = self.known_name(self.name_table(false), state_key).await?;
        Ok(kind.zip(key))
    }

    #[cfg(test)]
    async fn known_name(
        &self,
        names: NameTable<'_>,
        name: &str,
    ) -> Result<Option<i64>, StorageError> {
        let NameTable {
            cache,
            table,
            nid_column,
            name_column,
        } = names;
        if let Some(nid) = lock(cache).by_name.get(name) {
            return Ok(Some(nid));
        }
        let sql = format!("SELECT {nid_column} FROM {table} WHERE {name_column} = $1");
        let nid: Option<i64> = sql::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.db.pool)
            .await?;
        if let Some(nid) = nid {
            lock(cache).insert(name.to_owned(), nid);
        }
        Ok(nid)
    }

    /// Remembers what a committed transaction learnt.
    pub(crate) fn remember(&self, learnt: Learnt) {
        {
            let mut names = lock(&self.caches.types);
            for (name, nid) in learnt.types {
                names.insert(name, nid);
            }
        }
        {
            let mut names = lock(&self.caches.keys);
            for (name, nid) in learnt.keys {
                names.insert(name, nid);
            }
        }
        let mut blocks = lock(&self.caches.block_by_hash);
        for (hash, nid) in learnt.blocks {
            blocks.insert(hash, nid);
        }
    }

    /// Interns an event type or state key inside `tx`.
    pub(crate) async fn intern(
        &self,
        tx: &mut Transaction,
        learnt: &mut Learnt,
        is_type: bool,
        name: &str,
    ) -> Result<i64, StorageError> {
        let NameTable {
            cache,
            table,
            nid_column,
            name_column,
        } = self.name_table(is_type);
        if let Some(nid) = lock(cache).by_name.get(name) {
            return Ok(nid);
        }
        let list = if is_type { &learnt.types } else { &learnt.keys };
        if let Some((_, nid)) = list.iter().find(|(n, _)| n == name) {
            return Ok(*nid);
        }
        let insert = format!(
            "INSERT INTO {table} ({name_column}) VALUES ($1) ON CONFLICT DO NOTHING
             RETURNING {nid_column}"
        );
        let inserted: Option<i64> = sql::query_scalar(sqlx::AssertSqlSafe(insert))
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?;
        let nid: i64 = match inserted {
            Some(nid) => nid,
            None => {
                let select = format!("SELECT {nid_column} FROM {table} WHERE {name_column} = $1");
                sql::query_scalar(sqlx::AssertSqlSafe(select))
                    .bind(name)
                    .fetch_one(&mut **tx)
                    .await?
            }
        };
        if is_type {
            learnt.types.push((name.to_owned(), nid));
        } else {
            learnt.keys.push((name.to_owned(), nid));
        }
        Ok(nid)
    }

    /// [`Storage::intern`] for many names at once (a join's thousands of
    /// member keys): what the caches and this transaction do not know is
    /// inserted and read back many to a statement.
    pub(crate) async fn intern_many(
        &self,
        tx: &mut Transaction,
        learnt: &mut Learnt,
        is_type: bool,
        names: &[&str],
    ) -> Result<HashMap<String, i64>, StorageError> {
        let NameTable {
            cache,
            table,
            nid_column,
            name_column,
        } = self.name_table(is_type);
        let mut found: HashMap<String, i64> = HashMap::with_capacity(names.len());
        let mut missing: Vec<&str> = Vec::new();
        {
            let cached = lock(cache);
            for name in names {
                match cached.by_name.get(*name) {
                    Some(nid) => {
                        found.insert((*name).to_owned(), nid);
                    }
                    None => missing.push(name),
                }
            }
        }
        let list = if is_type {
            &mut learnt.types
        } else {
            &mut learnt.keys
        };
        if !missing.is_empty() && !list.is_empty() {
            let known: HashMap<&str, i64> =
                list.iter().map(|(n, nid)| (n.as_str(), *nid)).collect();
            missing.retain(|name| match known.get(name) {
                Some(nid) => {
                    found.insert((*name).to_owned(), *nid);
                    false
                }
                None => true,
            });
        }
        missing.sort_unstable();
        missing.dedup();
        for chunk in missing.chunks(INTERNED_PER_STATEMENT) {
            let insert = format!(
                "INSERT INTO {table} ({name_column}) VALUES {} ON CONFLICT DO NOTHING",
                ganglion_base::database::value_rows(self.db.engine, 1, chunk.len(), 1)
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(insert));
            for name in chunk {
                query = query.bind(*name);
            }
            query.execute(&mut **tx).await?;
            let select = format!(
                "SELECT {name_column}, {nid_column} FROM {table} WHERE {name_column} IN ({})",
                ganglion_base::database::params(self.db.engine, 1, chunk.len())
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(select));
            for name in chunk {
                query = query.bind(*name);
            }
            for row in query.fetch_all(&mut **tx).await? {
                let (name, nid): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
                list.push((name.clone(), nid));
                found.insert(name, nid);
            }
        }
        Ok(found)
    }

    /// Stores `state` as a snapshot (sharing every unchanged block) inside
    /// `tx` and returns its NID; an equal snapshot is reused.
    pub(crate) async fn write_snapshot(
        &self,
        tx: &mut Transaction,
        learnt: &mut Learnt,
        state: &mut NidState,
    ) -> Result<i64, StorageError> {
        self.write_snapshots(tx, learnt, std::slice::from_mut(state))
            .await?;
        state
            .snapshot_nid
            .ok_or_else(|| StorageError::Corrupt("a snapshot not written".into()))
    }

    /// Stores each of `states` as a snapshot (sharing every unchanged
    /// block) inside `tx` and sets its NID; equal blocks and snapshots are
    /// reused. The new blocks, then the new snapshots, are written many to a
    /// statement: a new room's initial state is a snapshot per event.
    pub(crate) async fn write_snapshots(
        &self,
        tx: &mut Transaction,
        learnt: &mut Learnt,
        states: &mut [NidState],
    ) -> Result<(), StorageError> {
        // Per state to write: its index and its blocks as (hash, bytes),
        // `None` for an empty block.
        type Blocks = Vec<Option<(Vec<u8>, Vec<u8>)>>;
        let mut pending: Vec<(usize, Blocks)> = Vec::new();
        for (i, state) in states.iter_mut().enumerate() {
            if state.snapshot_nid.is_some() {
                continue;
            }
            if state.entries.is_empty() {
                state.snapshot_nid = Some(0);
                continue;
            }
            let blocks = state_blocks::split(&state.entries)
                .into_iter()
                .map(|block| (!block.is_empty()).then(|| (state_blocks::hash(&block), block)))
                .collect();
            pending.push((i, blocks));
        }
        if pending.is_empty() {
            return Ok(());
        }
        // Each block's NID: cached, learnt in this transaction, or written.
        let mut block_nids: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut new_blocks: Vec<(&[u8], &[u8], i64)> = Vec::new();
        {
            let cache = lock(&self.caches.block_by_hash);
            for (hash, bytes) in pending
                .iter()
                .flat_map(|(_, blocks)| blocks.iter().flatten())
            {
                if block_nids.contains_key(hash)
                    || new_blocks.iter().any(|(h, _, _)| *h == hash.as_slice())
                {
                    continue;
                }
                let known = cache.get(hash).or_else(|| {
                    learnt
                        .blocks
                        .iter()
                        .find(|(h, _)| h == hash)
                        .map(|(_, n)| *n)
                });
                match known {
                    Some(nid) => {
                        block_nids.insert(hash.clone(), nid);
                    }
                    None => new_blocks.push((hash.as_slice(), bytes.as_slice(), 0)),
                }
            }
        }
        let written = self
            .insert_hashed(
                tx,
                "state_blocks",
                "block_nid",
                &["hash", "entries"],
                &new_blocks,
            )
            .await?;
        for (hash, (nid, _)) in written {
            learnt.blocks.push((hash.clone(), nid));
            block_nids.insert(hash, nid);
        }
        // Each snapshot: its list of block NIDs, by the list's hash.
        let mut lists: Vec<(usize, Vec<u8>, Vec<u8>)> = Vec::with_capacity(pending.len());
        for (i, blocks) in &pending {
            let mut nids = Vec::with_capacity(blocks.len());
            for block in blocks {
                nids.push(match block {
                    Some((hash, _)) => *block_nids
                        .get(hash)
                        .ok_or_else(|| StorageError::Corrupt("a state block not written".into()))?,
                    None => 0,
                });
            }
            let list = state_blocks::encode_nids(&nids);
            lists.push((*i, state_blocks::hash(&list), list));
        }
        let mut rows: Vec<(&[u8], &[u8], i64)> = Vec::with_capacity(lists.len());
        for (i, hash, list) in &lists {
            if !rows.iter().any(|(h, _, _)| *h == hash.as_slice()) {
                rows.push((
                    hash.as_slice(),
                    list.as_slice(),
                    states[*i].entries.len() as i64,
                ));
            }
        }
        let snapshots = self
            .insert_hashed(
                tx,
                "state_snapshots",
                "snapshot_nid",
                &["hash", "block_nids", "entry_count"],
                &rows,
            )
            .await?;
        for (i, hash, _) in &lists {
            let (nid, created) = *snapshots
                .get(hash)
                .ok_or_else(|| StorageError::Corrupt("a snapshot not written".into()))?;
            let state = &mut states[*i];
            if created && !learnt.snapshots.iter().any(|(n, _)| *n == nid) {
                learnt.snapshots.push((nid, state.entries.clone()));
            }
            state.snapshot_nid = Some(nid);
        }
        Ok(())
    }

    /// Inserts rows named by a content hash (`columns`: the hash, the
    /// bytes and, for a third column, the number), many to a statement.
    /// Returns each row's NID by hash, and whether this wrote it: a row
    /// stored before keeps its NID.
    async fn insert_hashed(
        &self,
        tx: &mut Transaction,
        table: &str,
        nid_column: &str,
        columns: &[&str],
        rows: &[(&[u8], &[u8], i64)],
    ) -> Result<HashMap<Vec<u8>, (i64, bool)>, StorageError> {
        let engine = self.db.engine;
        let width = columns.len();
        let mut nids: HashMap<Vec<u8>, (i64, bool)> = HashMap::with_capacity(rows.len());
        for chunk in rows.chunks(HASHED_ROWS) {
            // The table and column names are ours, never input.
            let sql = format!(
                "INSERT INTO {table} ({}) VALUES {} ON CONFLICT DO NOTHING RETURNING hash, {nid_column}",
                columns.join(", "),
                ganglion_base::database::value_rows(engine, 1, chunk.len(), width)
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(sql));
            for (hash, bytes, number) in chunk {
                query = query.bind(*hash).bind(*bytes);
                if width > 2 {
                    query = query.bind(*number);
                }
            }
            for row in query.fetch_all(&mut **tx).await? {
                nids.insert(row.try_get(0)?, (row.try_get(1)?, true));
            }
            let stored: Vec<&[u8]> = chunk
                .iter()
                .map(|(hash, _, _)| *hash)
                .filter(|hash| !nids.contains_key(*hash))
                .collect();
            if stored.is_empty() {
                continue;
            }
            let sql = format!(
                "SELECT hash, {nid_column} FROM {table} WHERE hash IN ({})",
                ganglion_base::database::params(engine, 1, stored.len())
            );
            let mut query = sql::query(sqlx::AssertSqlSafe(sql));
            for hash in &stored {
                query = query.bind(*hash);
            }
            for row in query.fetch_all(&mut **tx).await? {
                nids.insert(row.try_get(0)?, (row.try_get(1)?, false));
            }
        }
        Ok(nids)
    }

    /// Bytes and rows the state tables hold (for the benchmark).
    pub(crate) async fn state_storage_size(&self) -> Result<(i64, i64, i64, i64), StorageError> {
        let row = sql::query(
            "SELECT (SELECT COUNT(*) FROM state_blocks),
                    (SELECT COALESCE(SUM(LENGTH(entries) + LENGTH(hash)), 0) FROM state_blocks),
                    (SELECT COUNT(*) FROM state_snapshots),
                    (SELECT COALESCE(SUM(LENGTH(block_nids) + LENGTH(hash)), 0) FROM state_snapshots)",
        )
        .fetch_one(&self.db.pool)
        .await?;
        Ok((
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        ))
    }
}

#[cfg(test)]
mod names_tests {
    use super::Names;

    /// Names from other servers' events never grow the cache past its
    /// size, and both directions always agree.
    #[test]
    fn interned_names_stay_bounded_and_consistent() {
        let mut names = Names::new(3);
        for nid in 0..100 {
            names.insert(format!("m.type.{nid}"), nid);
            assert!(names.by_name.len() <= 3 && names.by_nid.len() <= 3);
            assert_eq!(names.by_name.len(), names.by_nid.len());
            assert_eq!(names.by_name.get(&format!("m.type.{nid}")), Some(nid));
            assert_eq!(
                names.by_nid.get(&nid).as_deref(),
                Some(format!("m.type.{nid}").as_str())
            );
        }
    }
}
