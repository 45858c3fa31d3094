//! A store in SQLite, on a connection the application owns.

use std::borrow::BorrowMut;

use rusqlite::{params, Connection, OptionalExtension};

use crate::{
    account::{Account, PreKeyRecord, SignedPreKeyRecord},
    changes::{Changes, Jid, SessionAddress},
    error::StoreError,
    keys::{DeviceId, KeyPair, PrivateKey, PublicKey},
    ledger::LedgerEntry,
    namespace::{Namespace, NamespaceSet},
    ratchet::{SendState, SendStep, SessionRecord},
    traits::*,
    trust::TrustLevel,
    FastMap,
};

/// The migrations, in order. Index + 1 is the schema version each one produces.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_initial.sql"),
    include_str!("migrations/002_account_namespaces.sql"),
    include_str!("migrations/003_ledger.sql"),
    include_str!("migrations/004_hidden_pre_keys.sql"),
    include_str!("migrations/005_spent_tokens.sql"),
    include_str!("migrations/006_replies_due.sql"),
    include_str!("migrations/007_session_steps.sql"),
    include_str!("migrations/008_session_ids.sql"),
];

/// From this many items on, a batch read scans the table once instead of querying item by item.
const SCAN_FROM: usize = 32;

/// Prepared statements the connection keeps (see [`SqliteStore::new`]).
const STATEMENTS_KEPT: usize = 64;

/// Session steps written per statement (2 parameters each, far below SQLite's limit).
const STEP_ROWS: usize = 128;

/// The statement that writes `rows` session steps, by session id.
fn step_insert(rows: usize) -> String {
    let mut sql = String::from("INSERT OR REPLACE INTO omemo_session_step (session, step) VALUES ");
    for i in 0..rows {
        sql.push_str(if i == 0 { "(?,?)" } else { ",(?,?)" });
    }
    sql
}

/// A stored record with its delta (if any) applied.
fn record_with_step(_id: i64, record: &[u8], step: Option<&[u8]>) -> Result<SessionRecord, StoreError> {
    let mut r = SessionRecord::from_bytes(record)?;
    if let Some(step) = step {
        r.apply_step(&SendStep::from_bytes(step)?)?;
    }
    Ok(r)
}

/// Store over a rusqlite connection. Tables are prefixed `omemo_`; the schema version is kept in
/// `omemo_schema`.
pub struct SqliteStore<C: BorrowMut<Connection>> {
    conn: C,
    /// What group sends read, kept from send to send (see [`ReadCache`]).
    cache: std::cell::RefCell<ReadCache>,
}

/// What a group send reads (the account, send states, device lists, trust), kept so that the next send of the same
/// room reads only what changed. Kept in step with every change set this store commits (a stored step
/// is applied to the cached send state; a written record, device list or trust decision replaces what
/// was kept); dropped whole when another connection committed to the database (`PRAGMA data_version`
/// changed). Secrets in it zeroize when dropped, as everywhere else.
#[derive(Default)]
struct ReadCache {
    /// `PRAGMA data_version` when the entries were read.
    data_version: Option<i64>,
    /// Where `sessions` keeps each address's entry (a commit finds the entries of its steps once, then
    /// reaches them by index after the transaction).
    session_at: FastMap<SessionAddress, usize>,
    /// `None`: no session (also an entry dropped since).
    sessions: Vec<Option<KeptSession>>,
    /// Per namespace and JID: the active devices (`None`: no list seen).
    devices: FastMap<Namespace, FastMap<Jid, Option<Vec<DeviceId>>>>,
    /// Per JID and identity key: the decision (`None`: none).
    trust: FastMap<String, FastMap<[u8; 32], Option<TrustLevel>>>,
    /// Entries kept (all maps).
    entries: usize,
    /// The account (`Some(None)`: read, and there is none). Every send reads it, and building it derives
    /// the public key and its Ed25519 form (a base-point multiplication and a conversion).
    account: Option<Option<Account>>,
}

/// A stored session as the read cache keeps it.
#[derive(Clone)]
struct KeptSession {
    /// Its id (`omemo_session.id`), which its steps are written under.
    id: i64,
    /// What sending needs of it (`None`: it has no sending chain).
    state: Option<SendState>,
}

impl ReadCache {
    /// The cache entry of `addr`, if it is kept.
    fn session(&self, addr: &SessionAddress) -> Option<&Option<KeptSession>> {
        self.session_at.get(addr).and_then(|&i| self.sessions.get(i))
    }

    /// Forgets `addr` (its record was written: read it again when asked).
    fn forget_session(&mut self, addr: &SessionAddress) {
        if let Some(slot) = self.session_at.remove(addr).and_then(|i| self.sessions.get_mut(i)) {
            *slot = None;
        }
    }
}

/// Past this many entries the cache starts over (a few hundred bytes each at most).
const CACHE_MAX: usize = 200_000;

impl<C: BorrowMut<Connection>> std::fmt::Debug for SqliteStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore<Connection> {
    /// Opens (or creates) a database file that this store owns, in WAL mode.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Switching a new file to WAL needs a lock that another connection opening the same file at that
        // moment may hold, and SQLite reports that at once ("database is locked") instead of waiting:
        // retried, for at most the busy timeout.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => break other?,
            }
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        Self::new(conn)
    }
}

fn u32_of(v: i64, what: &'static str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(what))
}

fn key32(v: Vec<u8>, what: &'static str) -> Result<[u8; 32], StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt(what))
}

impl<C: BorrowMut<Connection>> SqliteStore<C> {
    /// Wraps the application's connection and brings our tables up to date (each migration in its own
    /// transaction).
    pub fn new(mut conn: C) -> Result<Self, StoreError> {
        let c = conn.borrow_mut();
        // A change set runs about 25 distinct statements, and rusqlite keeps 16 prepared (least recently
        // used first out): every commit prepared each of them again.
        c.set_prepared_statement_cache_capacity(STATEMENTS_KEPT);
        c.execute_batch("CREATE TABLE IF NOT EXISTS omemo_schema (version INTEGER NOT NULL)")?;
        // Each migration in its own write transaction, taken before the version is read: two processes
        // opening the same new file do not both run it.
        loop {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let version: Option<i64> = tx.query_row("SELECT max(version) FROM omemo_schema", [], |r| r.get(0))?;
            let version = version.unwrap_or(0) as usize;
            if version > MIGRATIONS.len() {
                return Err(StoreError::SchemaTooNew { found: version as u32, supported: MIGRATIONS.len() as u32 });
            }
            let Some(sql) = MIGRATIONS.get(version) else { break };
            tx.execute_batch(sql)?;
            tx.execute("DELETE FROM omemo_schema", [])?;
            tx.execute("INSERT INTO omemo_schema (version) VALUES (?1)", [version as i64 + 1])?;
            tx.commit()?;
        }
        Ok(Self { conn, cache: Default::default() })
    }

    /// The schema version in the database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let v: i64 = self.conn.borrow().query_row("SELECT max(version) FROM omemo_schema", [], |r| r.get(0))?;
        u32_of(v, "schema version")
    }

    /// The database file, if the store lives in one (an in-memory database has none).
    pub fn path(&self) -> Option<std::path::PathBuf> {
        self.c().path().filter(|p| !p.is_empty()).map(std::path::PathBuf::from)
    }

    /// Writes a consistent copy of the whole database (every table, not only ours) to a new file at
    /// `path` and opens it as a store of its own.
    pub fn copy_to(&self, path: impl AsRef<std::path::Path>) -> Result<SqliteStore<Connection>, StoreError> {
        let target = path.as_ref().to_str().ok_or(StoreError::Corrupt("copy target is not valid UTF-8"))?;
        self.c().execute("VACUUM INTO ?1", [target])?;
        SqliteStore::open(path)
    }

    /// Gives the connection back.
    pub fn into_inner(self) -> C {
        self.conn
    }

    pub(crate) fn c(&self) -> &Connection {
        self.conn.borrow()
    }

    /// The read cache, emptied first if another connection committed since it was filled (or it grew
    /// past [`CACHE_MAX`]).
    fn fresh_cache(&self) -> Result<std::cell::RefMut<'_, ReadCache>, StoreError> {
        let version: i64 = self.c().query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let mut cache = self.cache.borrow_mut();
        if cache.data_version != Some(version) || cache.entries > CACHE_MAX {
            *cache = ReadCache { data_version: Some(version), ..ReadCache::default() };
        }
        Ok(cache)
    }
}

/// Answers `keys` from what `cache` keeps, with one lookup each; what is not kept is read in one batch
/// (`read`), kept and answered (`keep` gives the answer).
fn kept_or_read<K: Clone, V: Default, R>(
    cache: &mut ReadCache,
    keys: &[K],
    kept: impl Fn(&ReadCache, &K) -> Option<V>,
    read: impl FnOnce(&[K]) -> Result<Vec<R>, StoreError>,
    keep: impl Fn(&mut ReadCache, K, R) -> V,
) -> Result<Vec<V>, StoreError> {
    let mut out = Vec::with_capacity(keys.len());
    let mut at = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        match kept(cache, k) {
            Some(v) => out.push(v),
            None => {
                out.push(V::default());
                at.push(i);
            }
        }
    }
    if !at.is_empty() {
        let wanted: Vec<K> = at.iter().filter_map(|&i| keys.get(i).cloned()).collect();
        let read = read(&wanted)?;
        cache.entries += wanted.len();
        for ((i, k), v) in at.into_iter().zip(wanted).zip(read) {
            let v = keep(cache, k, v);
            if let Some(slot) = out.get_mut(i) {
                *slot = v;
            }
        }
    }
    Ok(out)
}

fn pair(private: Vec<u8>, public: Vec<u8>) -> Result<KeyPair, StoreError> {
    Ok(KeyPair {
        private: PrivateKey::from_bytes(key32(private, "private key")?),
        public: PublicKey::from_bytes(key32(public, "public key")?),
    })
}

fn spk_row(
    id: i64,
    private: Vec<u8>,
    public: Vec<u8>,
    sig: Vec<u8>,
    at: i64,
) -> Result<SignedPreKeyRecord, StoreError> {
    Ok(SignedPreKeyRecord {
        id: u32_of(id, "signed pre-key id")?,
        key_pair: pair(private, public)?,
        signature: sig.try_into().map_err(|_| StoreError::Corrupt("signature"))?,
        created_at: u64::try_from(at).map_err(|_| StoreError::Corrupt("created_at"))?,
    })
}

impl<C: BorrowMut<Connection>> AccountStore for SqliteStore<C> {
    fn account(&self) -> Result<Option<Account>, StoreError> {
        let mut cache = self.fresh_cache()?;
        if let Some(kept) = &cache.account {
            return Ok(kept.clone());
        }
        let read = self.read_account()?;
        cache.account = Some(read.clone());
        Ok(read)
    }
}

impl<C: BorrowMut<Connection>> SqliteStore<C> {
    /// [`AccountStore::account`] from the database.
    fn read_account(&self) -> Result<Option<Account>, StoreError> {
        let row = self
            .c()
            .query_row(
                "SELECT jid, device_id, identity_private, next_pre_key_id, next_signed_pre_key_id, namespaces \
                 FROM omemo_account",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((jid, device, secret, next_pk, next_spk, ns)) = row else {
            return Ok(None);
        };
        let namespaces =
            u8::try_from(ns).ok().and_then(NamespaceSet::from_bits).ok_or(StoreError::Corrupt("account namespaces"))?;
        Ok(Some(Account::new(
            jid,
            u32_of(device, "device id")?,
            Account::identity_from_secret(key32(secret, "identity key")?),
            u32_of(next_pk, "pre-key counter")?,
            u32_of(next_spk, "signed pre-key counter")?,
            namespaces,
        )))
    }
}

impl<C: BorrowMut<Connection>> PreKeyStore for SqliteStore<C> {
    fn pre_key(&self, id: u32) -> Result<Option<PreKeyRecord>, StoreError> {
        let row = self
            .c()
            .query_row("SELECT private, public FROM omemo_pre_key WHERE id = ?1", [id], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .optional()?;
        row.map(|(private, public)| Ok(PreKeyRecord { id, key_pair: pair(private, public)? })).transpose()
    }

    fn hidden_pre_keys(&self) -> Result<Vec<u32>, StoreError> {
        self.hidden_ids()
    }

    fn pre_keys(&self) -> Result<Vec<PreKeyRecord>, StoreError> {
        let mut stmt =
            self.c().prepare_cached("SELECT id, private, public FROM omemo_pre_key WHERE hidden = 0 ORDER BY id")?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?)))?;
        rows.map(|row| {
            let (id, private, public) = row?;
            Ok(PreKeyRecord { id: u32_of(id, "pre-key id")?, key_pair: pair(private, public)? })
        })
        .collect()
    }
}

impl<C: BorrowMut<Connection>> SqliteStore<C> {
    fn hidden_ids(&self) -> Result<Vec<u32>, StoreError> {
        let mut stmt = self.c().prepare_cached("SELECT id FROM omemo_pre_key WHERE hidden = 1 ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        rows.map(|r| u32_of(r?, "pre-key id")).collect()
    }
}

impl<C: BorrowMut<Connection>> SignedPreKeyStore for SqliteStore<C> {
    fn signed_pre_key(&self, id: u32) -> Result<Option<SignedPreKeyRecord>, StoreError> {
        let row = self
            .c()
            .query_row(
                "SELECT id, private, public, signature, created_at FROM omemo_signed_pre_key WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        row.map(|(id, a, b, s, t)| spk_row(id, a, b, s, t)).transpose()
    }

    fn signed_pre_keys(&self) -> Result<Vec<SignedPreKeyRecord>, StoreError> {
        let mut stmt =
            self.c().prepare_cached("SELECT id, private, public, signature, created_at FROM omemo_signed_pre_key")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
        rows.map(|row| {
            let (id, a, b, s, t) = row?;
            spk_row(id, a, b, s, t)
        })
        .collect()
    }
}

impl<C: BorrowMut<Connection>> SqliteStore<C> {
    /// Each address's stored record and step, decoded by `decode` (with the session's id), in the order
    /// asked: point queries for a few, one pass over the table for many (only the rows asked for are
    /// decoded).
    fn session_rows<T: Clone>(
        &self,
        addrs: &[SessionAddress],
        decode: impl Fn(i64, &[u8], Option<&[u8]>) -> Result<T, StoreError>,
    ) -> Result<Vec<Option<T>>, StoreError> {
        let row_of = |row: &rusqlite::Row<'_>, first: usize| -> Result<T, StoreError> {
            let id: i64 = row.get(first)?;
            let record = row.get_ref(first + 1)?.as_blob().map_err(|_| StoreError::Corrupt("session record"))?;
            let step = row.get_ref(first + 2)?.as_blob_or_null().map_err(|_| StoreError::Corrupt("session step"))?;
            decode(id, record, step)
        };
        if addrs.len() < SCAN_FROM {
            let mut stmt = self.c().prepare_cached(
                "SELECT s.id, s.record, t.step FROM omemo_session s LEFT JOIN omemo_session_step t \
                 ON t.session = s.id WHERE s.namespace = ?1 AND s.jid = ?2 AND s.device_id = ?3",
            )?;
            return addrs
                .iter()
                .map(|addr| {
                    let mut rows = stmt.query(params![addr.namespace.code(), addr.jid.as_str(), addr.device])?;
                    rows.next()?.map(|row| row_of(row, 0)).transpose()
                })
                .collect();
        }
        // Where each address is first asked for; an address asked for again gets a copy at the end.
        let mut first: FastMap<(i64, &str, i64), usize> = FastMap::default();
        first.reserve(addrs.len());
        for (i, a) in addrs.iter().enumerate() {
            first.entry((i64::from(a.namespace.code()), a.jid.as_str(), i64::from(a.device))).or_insert(i);
        }
        let mut out: Vec<Option<T>> = vec![None; addrs.len()];
        // One pass over the sessions, each step found by its session's id.
        let mut stmt = self.c().prepare_cached(
            "SELECT s.namespace, s.jid, s.device_id, s.id, s.record, t.step FROM omemo_session s \
             LEFT JOIN omemo_session_step t ON t.session = s.id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let jid = row.get_ref(1)?.as_str().map_err(|_| StoreError::Corrupt("session jid"))?;
            let (ns, device): (i64, i64) = (row.get(0)?, row.get(2)?);
            let Some(&at) = first.get(&(ns, jid, device)) else { continue };
            let value = row_of(row, 3)?;
            if let Some(slot) = out.get_mut(at) {
                *slot = Some(value);
            }
        }
        for (i, a) in addrs.iter().enumerate() {
            match first.get(&(i64::from(a.namespace.code()), a.jid.as_str(), i64::from(a.device))) {
                Some(&at) if at != i => {
                    let copy = out.get(at).cloned().flatten();
                    if let Some(slot) = out.get_mut(i) {
                        *slot = copy;
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

impl<C: BorrowMut<Connection>> SessionStore for SqliteStore<C> {
    fn session(&self, addr: &SessionAddress) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.session_rows(std::slice::from_ref(addr), record_with_step)?.pop().flatten())
    }

    fn sessions(&self, addrs: &[SessionAddress]) -> Result<Vec<Option<SessionRecord>>, StoreError> {
        self.session_rows(addrs, record_with_step)
    }

    fn send_states(&self, addrs: &[SessionAddress]) -> Result<Vec<Option<SendState>>, StoreError> {
        let mut cache = self.fresh_cache()?;
        kept_or_read(
            &mut cache,
            addrs,
            |c, a| c.session(a).map(|kept| kept.as_ref().and_then(|k| k.state.clone())),
            |wanted| {
                self.session_rows(wanted, |id, record, step| {
                    Ok(KeptSession { id, state: SendState::from_record_bytes(record, step)? })
                })
            },
            |c, a, kept| {
                let state = kept.as_ref().and_then(|k| k.state.clone());
                c.session_at.insert(a, c.sessions.len());
                c.sessions.push(kept);
                state
            },
        )
    }

    fn session_devices(&self, ns: Namespace, jid: &str) -> Result<Vec<DeviceId>, StoreError> {
        let mut stmt = self.c().prepare_cached(
            "SELECT device_id FROM omemo_session WHERE namespace = ?1 AND jid = ?2 ORDER BY device_id",
        )?;
        let rows = stmt.query_map(params![ns.code(), jid], |r| r.get::<_, i64>(0))?;
        rows.map(|r| u32_of(r?, "device id")).collect()
    }
}

impl<C: BorrowMut<Connection>> IdentityStore for SqliteStore<C> {
    fn identity(&self, jid: &str, device: DeviceId) -> Result<Option<PublicKey>, StoreError> {
        let mut stmt =
            self.c().prepare_cached("SELECT identity_key FROM omemo_identity WHERE jid = ?1 AND device_id = ?2")?;
        let key: Option<Vec<u8>> = stmt.query_row(params![jid, device], |r| r.get(0)).optional()?;
        key.map(|k| Ok(PublicKey::from_bytes(key32(k, "identity key")?))).transpose()
    }

    fn trust(&self, jid: &str, key: &PublicKey) -> Result<Option<TrustLevel>, StoreError> {
        let mut stmt = self.c().prepare_cached("SELECT level FROM omemo_trust WHERE jid = ?1 AND identity_key = ?2")?;
        let level: Option<i64> = stmt.query_row(params![jid, &key.as_bytes()[..]], |r| r.get(0)).optional()?;
        level
            .map(|l| u8::try_from(l).ok().and_then(TrustLevel::from_code).ok_or(StoreError::Corrupt("trust level")))
            .transpose()
    }

    fn trust_of(&self, jid: &str) -> Result<Vec<(PublicKey, TrustLevel)>, StoreError> {
        let mut stmt = self.c().prepare_cached("SELECT identity_key, level FROM omemo_trust WHERE jid = ?1")?;
        let rows = stmt.query_map([jid], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
        rows.map(|row| {
            let (k, l) = row?;
            let level =
                u8::try_from(l).ok().and_then(TrustLevel::from_code).ok_or(StoreError::Corrupt("trust level"))?;
            Ok((PublicKey::from_bytes(key32(k, "identity key")?), level))
        })
        .collect()
    }

    fn identities(&self, devices: &[(&str, DeviceId)]) -> Result<Vec<Option<PublicKey>>, StoreError> {
        if devices.len() < SCAN_FROM {
            return devices.iter().map(|(j, d)| self.identity(j, *d)).collect();
        }
        // Each device's place in `found` (a device asked for twice shares it).
        let at: std::collections::HashMap<(&str, i64), usize> =
            devices.iter().enumerate().map(|(i, (j, d))| ((*j, i64::from(*d)), i)).collect();
        let mut found: Vec<Option<PublicKey>> = vec![None; devices.len()];
        let mut stmt = self.c().prepare_cached("SELECT jid, device_id, identity_key FROM omemo_identity")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let jid = row.get_ref(0)?.as_str().map_err(|_| StoreError::Corrupt("identity jid"))?;
            let Some(&i) = at.get(&(jid, row.get::<_, i64>(1)?)) else { continue };
            let key = row.get_ref(2)?.as_blob().map_err(|_| StoreError::Corrupt("identity key"))?;
            if let Some(slot) = found.get_mut(i) {
                *slot = Some(PublicKey::from_bytes(key32(key.to_vec(), "identity key")?));
            }
        }
        Ok(devices
            .iter()
            .map(|(j, d)| at.get(&(*j, i64::from(*d))).and_then(|&i| found.get(i).copied().flatten()))
            .collect())
    }

    fn any_verified(&self, jids: &[&str]) -> Result<Vec<bool>, StoreError> {
        if jids.len() < SCAN_FROM {
            return jids
                .iter()
                .map(|j| Ok(self.trust_of(j)?.iter().any(|(_, t)| *t == TrustLevel::Verified)))
                .collect();
        }
        let mut stmt = self.c().prepare_cached("SELECT DISTINCT jid FROM omemo_trust WHERE level = ?1")?;
        let verified = stmt
            .query_map([TrustLevel::Verified.code()], |r| r.get::<_, String>(0))?
            .collect::<Result<std::collections::HashSet<String>, _>>()?;
        Ok(jids.iter().map(|j| verified.contains(*j)).collect())
    }

    fn trusts(&self, keys: &[(&str, PublicKey)]) -> Result<Vec<Option<TrustLevel>>, StoreError> {
        let mut cache = self.fresh_cache()?;
        kept_or_read(
            &mut cache,
            keys,
            |c, (j, k)| c.trust.get(*j).and_then(|of| of.get(k.as_bytes())).copied(),
            |wanted| self.read_trusts(wanted),
            |c, (j, k), level| {
                c.trust.entry(j.to_owned()).or_default().insert(*k.as_bytes(), level);
                level
            },
        )
    }
}

impl<C: BorrowMut<Connection>> SqliteStore<C> {
    /// [`IdentityStore::trusts`] from the database.
    fn read_trusts(&self, keys: &[(&str, PublicKey)]) -> Result<Vec<Option<TrustLevel>>, StoreError> {
        if keys.len() < SCAN_FROM {
            return keys.iter().map(|(j, k)| self.trust(j, k)).collect();
        }
        // Where each key is first asked for; a key asked for again gets a copy at the end.
        let mut first: std::collections::HashMap<(&str, [u8; 32]), usize> =
            std::collections::HashMap::with_capacity(keys.len());
        for (i, (j, k)) in keys.iter().enumerate() {
            first.entry((*j, *k.as_bytes())).or_insert(i);
        }
        let mut out = vec![None; keys.len()];
        let mut stmt = self.c().prepare_cached("SELECT jid, identity_key, level FROM omemo_trust")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let jid = row.get_ref(0)?.as_str().map_err(|_| StoreError::Corrupt("trust jid"))?;
            let Ok(key) =
                <[u8; 32]>::try_from(row.get_ref(1)?.as_blob().map_err(|_| StoreError::Corrupt("trust key"))?)
            else {
                continue;
            };
            let Some(&at) = first.get(&(jid, key)) else { continue };
            let level = u8::try_from(row.get::<_, i64>(2)?)
                .ok()
                .and_then(TrustLevel::from_code)
                .ok_or(StoreError::Corrupt("trust level"))?;
            if let Some(slot) = out.get_mut(at) {
                *slot = Some(level);
            }
        }
        for (i, (j, k)) in keys.iter().enumerate() {
            if let Some(&at) = first.get(&(*j, *k.as_bytes())) {
                if at != i {
                    let copy = out.get(at).copied().flatten();
                    if let Some(slot) = out.get_mut(i) {
                        *slot = copy;
                    }
                }
            }
        }
        Ok(out)
    }
}

impl<C: BorrowMut<Connection>> DeviceListStore for SqliteStore<C> {
    fn device_list(&self, ns: Namespace, jid: &str) -> Result<Option<Vec<DeviceId>>, StoreError> {
        let mut stmt = self.c().prepare_cached(
            "SELECT device_id, active FROM omemo_device WHERE namespace = ?1 AND jid = ?2 ORDER BY device_id",
        )?;
        let rows: Vec<(i64, bool)> =
            stmt.query_map(params![ns.code(), jid], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        if rows.is_empty() {
            return Ok(None);
        }
        rows.into_iter().filter(|(_, a)| *a).map(|(d, _)| u32_of(d, "device id")).collect::<Result<_, _>>().map(Some)
    }

    fn device_lists(&self, ns: Namespace, jids: &[&str]) -> Result<DeviceLists, StoreError> {
        let mut cache = self.fresh_cache()?;
        // One lookup per JID, the kept JIDs handed out: the answer when everything is kept (a room's
        // steady state).
        let kept = cache.devices.get(&ns);
        let mut out = DeviceLists::with_capacity(jids.len());
        let mut missing: Vec<&str> = Vec::new();
        for j in jids {
            match kept.and_then(|of| of.get_key_value(*j)) {
                Some((jid, list)) => out.push_shared(jid, list.as_deref()),
                None => {
                    missing.push(j);
                    out.push(None);
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        // What the cache lacks is read in one batch and kept; then every answer comes from the cache.
        let read = self.read_device_lists(ns, &missing)?;
        cache.entries += missing.len();
        let of = cache.devices.entry(ns).or_default();
        for (j, list) in missing.into_iter().zip(read) {
            of.insert(Jid::from(j), list);
        }
        let mut out = DeviceLists::with_capacity(jids.len());
        for j in jids {
            match of.get_key_value(*j) {
                Some((jid, list)) => out.push_shared(jid, list.as_deref()),
                None => out.push(None),
            }
        }
        Ok(out)
    }
}

impl<C: BorrowMut<Connection>> SqliteStore<C> {
    /// [`DeviceListStore::device_lists`] from the database.
    fn read_device_lists(&self, ns: Namespace, jids: &[&str]) -> Result<Vec<Option<Vec<DeviceId>>>, StoreError> {
        if jids.len() < SCAN_FROM {
            return jids.iter().map(|j| self.device_list(ns, j)).collect();
        }
        // Where each JID is first asked for; a JID asked for again gets a copy at the end.
        let mut first: std::collections::HashMap<&str, usize> = std::collections::HashMap::with_capacity(jids.len());
        for (i, j) in jids.iter().enumerate() {
            first.entry(*j).or_insert(i);
        }
        let mut out: Vec<Option<Vec<DeviceId>>> = vec![None; jids.len()];
        let mut stmt = self.c().prepare_cached(
            "SELECT jid, device_id, active FROM omemo_device WHERE namespace = ?1 ORDER BY jid, device_id",
        )?;
        let mut rows = stmt.query([ns.code()])?;
        while let Some(row) = rows.next()? {
            let jid = row.get_ref(0)?.as_str().map_err(|_| StoreError::Corrupt("device jid"))?;
            let Some(&at) = first.get(jid) else { continue };
            let device = u32_of(row.get(1)?, "device id")?;
            let active: bool = row.get(2)?;
            if let Some(slot) = out.get_mut(at) {
                // A list we saw (even with every device inactive) is `Some`.
                let list = slot.get_or_insert_with(Vec::new);
                if active {
                    list.push(device);
                }
            }
        }
        for (i, j) in jids.iter().enumerate() {
            match first.get(j) {
                Some(&at) if at != i => {
                    let copy = out.get(at).cloned().flatten();
                    if let Some(slot) = out.get_mut(i) {
                        *slot = copy;
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// A ledger row: room, origin-id, message id, hash, plaintext, sent_at.
type LedgerRow = (String, String, String, Vec<u8>, Option<Vec<u8>>, i64);

fn ledger_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn ledger_entry(row: LedgerRow) -> Result<LedgerEntry, StoreError> {
    let (room, origin_id, message_id, hash, plaintext, at) = row;
    Ok(LedgerEntry {
        room,
        origin_id,
        message_id,
        plaintext_hash: key32(hash, "plaintext hash")?,
        plaintext,
        sent_at: u64::try_from(at).map_err(|_| StoreError::Corrupt("sent_at"))?,
    })
}

const LEDGER_COLUMNS: &str = "room, origin_id, message_id, plaintext_hash, plaintext, sent_at";

impl<C: BorrowMut<Connection>> LedgerStore for SqliteStore<C> {
    fn ledger_by_origin_id(&self, room: &str, origin_id: &str) -> Result<Option<LedgerEntry>, StoreError> {
        let mut stmt = self
            .c()
            .prepare_cached(&format!("SELECT {LEDGER_COLUMNS} FROM omemo_ledger WHERE room = ?1 AND origin_id = ?2"))?;
        stmt.query_row(params![room, origin_id], ledger_row).optional()?.map(ledger_entry).transpose()
    }

    fn ledger_by_message_id(&self, room: &str, message_id: &str) -> Result<Option<LedgerEntry>, StoreError> {
        let mut stmt = self.c().prepare_cached(&format!(
            "SELECT {LEDGER_COLUMNS} FROM omemo_ledger WHERE room = ?1 AND message_id = ?2"
        ))?;
        stmt.query_row(params![room, message_id], ledger_row).optional()?.map(ledger_entry).transpose()
    }

    fn seen(&self, room: &str, stanza_id: &str) -> Result<bool, StoreError> {
        let mut stmt = self.c().prepare_cached("SELECT 1 FROM omemo_seen WHERE room = ?1 AND stanza_id = ?2")?;
        Ok(stmt.query_row(params![room, stanza_id], |_| Ok(())).optional()?.is_some())
    }
    fn token_spent(&self, nonce: &[u8]) -> Result<bool, StoreError> {
        let mut stmt = self.c().prepare_cached("SELECT 1 FROM omemo_spent_token WHERE nonce = ?1")?;
        Ok(stmt.query_row(params![nonce], |_| Ok(())).optional()?.is_some())
    }
    fn replies_due(&self) -> Result<Vec<SessionAddress>, StoreError> {
        let mut stmt =
            self.c().prepare_cached("SELECT namespace, jid, device FROM omemo_reply_due ORDER BY 1, 2, 3")?;
        let rows: Vec<(u8, String, i64)> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(ns, jid, d)| {
                let ns = Namespace::from_code(ns).ok_or(StoreError::Corrupt("namespace"))?;
                Ok(SessionAddress::new(ns, jid, u32_of(d, "device id")?))
            })
            .collect()
    }
}

impl<C: BorrowMut<Connection>> Store for SqliteStore<C> {
    fn apply(&mut self, changes: &Changes) -> Result<(), StoreError> {
        self.apply_with(changes, |_| Ok(()))
    }
}

impl<C: BorrowMut<Connection>> SqliteStore<C> {
    /// Applies a change set and the application's own writes (`also`, e.g. the decrypted message into
    /// its history) in one transaction: both are committed, or neither. A crash can then never leave a
    /// ratchet advanced past a message the application did not keep. `also` writes the application's
    /// tables, never this store's (`omemo_…`): the store keeps what it read of them in step with its
    /// own change sets.
    pub fn apply_with(
        &mut self,
        changes: &Changes,
        also: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
    ) -> Result<(), StoreError> {
        let Changes {
            account,
            signed_pre_keys,
            removed_signed_pre_keys,
            pre_keys,
            removed_pre_keys,
            hidden_pre_keys,
            sessions,
            session_steps,
            identities,
            trust,
            device_lists,
            ledger,
            seen,
            spent_tokens,
            purge_tokens_before,
            replies_due,
            replies_done,
        } = changes;
        // The id of each step's session, and where the cache keeps its send state, from the cache when it
        // keeps the session (an id never changes: a record written again keeps it, and sessions are never
        // deleted); a step of another session is written by its address, below.
        let cache = self.cache.get_mut();
        let step_at: Vec<Option<(i64, usize)>> = session_steps
            .iter()
            .map(|(addr, _)| {
                let at = *cache.session_at.get(addr)?;
                cache.sessions.get(at)?.as_ref().map(|kept| (kept.id, at))
            })
            .collect();
        let tx = self.conn.borrow_mut().transaction()?;
        if let Some(a) = account {
            tx.execute(
                "INSERT OR REPLACE INTO omemo_account (id, jid, device_id, identity_private, next_pre_key_id, next_signed_pre_key_id, namespaces) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    a.jid,
                    a.device_id,
                    &a.identity.private.as_bytes()[..],
                    a.next_pre_key_id,
                    a.next_signed_pre_key_id,
                    a.namespaces.bits()
                ],
            )?;
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO omemo_signed_pre_key (id, private, public, signature, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for s in signed_pre_keys {
                let at = i64::try_from(s.created_at).map_err(|_| StoreError::Corrupt("created_at"))?;
                stmt.execute(params![
                    s.id,
                    &s.key_pair.private.as_bytes()[..],
                    &s.key_pair.public.as_bytes()[..],
                    &s.signature[..],
                    at
                ])?;
            }
            let mut stmt = tx.prepare_cached("DELETE FROM omemo_signed_pre_key WHERE id = ?1")?;
            for id in removed_signed_pre_keys {
                stmt.execute([id])?;
            }
            let mut stmt =
                tx.prepare_cached("INSERT OR REPLACE INTO omemo_pre_key (id, private, public) VALUES (?1, ?2, ?3)")?;
            for p in pre_keys {
                stmt.execute(params![p.id, &p.key_pair.private.as_bytes()[..], &p.key_pair.public.as_bytes()[..]])?;
            }
            let mut stmt = tx.prepare_cached("DELETE FROM omemo_pre_key WHERE id = ?1")?;
            for id in removed_pre_keys {
                stmt.execute([id])?;
            }
            let mut stmt = tx.prepare_cached("UPDATE omemo_pre_key SET hidden = 1 WHERE id = ?1")?;
            for id in hidden_pre_keys {
                stmt.execute([id])?;
            }
            // A record written again keeps its id (an upsert, not a replace), and loses its step.
            let mut stmt = tx.prepare_cached(
                "INSERT INTO omemo_session (namespace, jid, device_id, record) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (namespace, jid, device_id) DO UPDATE SET record = excluded.record",
            )?;
            let mut unstep = tx.prepare_cached(
                "DELETE FROM omemo_session_step WHERE session = \
                 (SELECT id FROM omemo_session WHERE namespace = ?1 AND jid = ?2 AND device_id = ?3)",
            )?;
            for (addr, rec) in sessions {
                stmt.execute(params![addr.namespace.code(), addr.jid.as_str(), addr.device, rec.to_bytes()])?;
                unstep.execute(params![addr.namespace.code(), addr.jid.as_str(), addr.device])?;
            }
            // Deltas (a group send writes one per recipient device), after the records: a step of a
            // record written in this change set goes on top of it. A step counts only on top of a stored
            // record (as in the memory store): a step of an address without one is not written.
            // Steps of sessions the cache keeps, by id, many rows per statement.
            let mut by_id: Vec<(i64, &SendStep)> =
                step_at.iter().zip(session_steps).filter_map(|(at, (_, step))| Some((at.as_ref()?.0, step))).collect();
            // In id order: SQLite then finds each row next to the one before instead of searching the
            // table from its root (a room's devices come in JID order, their ids in the order the
            // sessions were made; a micro-benchmark of 3,000 rows: 1.3 ms in order, 5–7 ms shuffled).
            // A stable sort: of two steps of one session, the later still wins.
            by_id.sort_by_key(|(id, _)| *id);
            // (SQLite copies what is bound: one buffer serves every step, and is wiped when dropped.)
            let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(SendStep::ENCODED_LEN));
            for chunk in by_id.chunks(STEP_ROWS) {
                let mut stmt = tx.prepare_cached(&step_insert(chunk.len()))?;
                let mut n = 0;
                for (id, step) in chunk {
                    step.write_to(&mut bytes);
                    stmt.raw_bind_parameter(n + 1, id)?;
                    stmt.raw_bind_parameter(n + 2, &bytes[..])?;
                    n += 2;
                }
                stmt.raw_execute()?;
            }
            // The others by address (their session, if any, found by the statement).
            let mut by_addr = tx.prepare_cached(
                "INSERT OR REPLACE INTO omemo_session_step (session, step) \
                 SELECT id, ?4 FROM omemo_session WHERE namespace = ?1 AND jid = ?2 AND device_id = ?3",
            )?;
            for ((addr, step), _) in session_steps.iter().zip(&step_at).filter(|(_, at)| at.is_none()) {
                step.write_to(&mut bytes);
                by_addr.execute(params![addr.namespace.code(), addr.jid.as_str(), addr.device, &bytes[..]])?;
            }
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO omemo_identity (jid, device_id, identity_key) VALUES (?1, ?2, ?3)",
            )?;
            for (jid, dev, key) in identities {
                stmt.execute(params![jid, dev, &key.as_bytes()[..]])?;
            }
            let mut stmt =
                tx.prepare_cached("INSERT OR REPLACE INTO omemo_trust (jid, identity_key, level) VALUES (?1, ?2, ?3)")?;
            for (jid, key, level) in trust {
                stmt.execute(params![jid, &key.as_bytes()[..], level.code()])?;
            }
            let mut clear =
                tx.prepare_cached("UPDATE omemo_device SET active = 0 WHERE namespace = ?1 AND jid = ?2")?;
            let mut set = tx.prepare_cached(
                "INSERT OR REPLACE INTO omemo_device (namespace, jid, device_id, active) VALUES (?1, ?2, ?3, 1)",
            )?;
            for (ns, jid, devices) in device_lists {
                clear.execute(params![ns.code(), jid])?;
                for d in devices {
                    set.execute(params![ns.code(), jid, d])?;
                }
            }
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO omemo_ledger ({LEDGER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ))?;
            for e in ledger {
                let at = i64::try_from(e.sent_at).map_err(|_| StoreError::Corrupt("sent_at"))?;
                stmt.execute(params![e.room, e.origin_id, e.message_id, &e.plaintext_hash[..], e.plaintext, at])?;
            }
            let mut stmt = tx.prepare_cached("INSERT OR IGNORE INTO omemo_seen (room, stanza_id) VALUES (?1, ?2)")?;
            for (room, stanza_id) in seen {
                stmt.execute(params![room, stanza_id])?;
            }
        }
        if !spent_tokens.is_empty() {
            let mut stmt =
                tx.prepare_cached("INSERT OR REPLACE INTO omemo_spent_token (nonce, expires_at) VALUES (?1, ?2)")?;
            for (nonce, expires_at) in spent_tokens {
                let at = i64::try_from(*expires_at).map_err(|_| StoreError::Corrupt("token expiry"))?;
                stmt.execute(params![nonce, at])?;
            }
        }
        if let Some(before) = purge_tokens_before {
            let before = i64::try_from(*before).unwrap_or(i64::MAX);
            tx.execute("DELETE FROM omemo_spent_token WHERE expires_at < ?1", [before])?;
        }
        for a in replies_done {
            tx.execute(
                "DELETE FROM omemo_reply_due WHERE namespace = ?1 AND jid = ?2 AND device = ?3",
                params![a.namespace.code(), a.jid.as_str(), a.device],
            )?;
        }
        for a in replies_due {
            tx.execute(
                "INSERT OR IGNORE INTO omemo_reply_due (namespace, jid, device) VALUES (?1, ?2, ?3)",
                params![a.namespace.code(), a.jid.as_str(), a.device],
            )?;
        }
        also(&tx)?;
        tx.commit()?;
        // Committed: the cached send states follow (a written record is read again when asked for; a
        // step moves the cached chain on, as reading the record with it would).
        let cache = self.cache.get_mut();
        if account.is_some() {
            cache.account = None;
        }
        for (addr, _) in sessions {
            cache.forget_session(addr);
        }
        for (ns, jid, _) in device_lists {
            if let Some(of) = cache.devices.get_mut(ns) {
                of.remove(jid.as_str());
            }
        }
        for (jid, key, level) in trust {
            if let Some(of) = cache.trust.get_mut(jid) {
                of.insert(*key.as_bytes(), Some(*level));
            }
        }
        // (The entry of a record written in this change set was dropped above: its slot is empty.)
        for ((addr, step), at) in session_steps.iter().zip(step_at) {
            let Some(slot) = at.and_then(|(_, i)| cache.sessions.get_mut(i)) else { continue };
            if let Some(KeptSession { state: Some(state), .. }) = slot {
                if state.apply_step(step).is_err() {
                    cache.forget_session(addr);
                }
            }
        }
        Ok(())
    }
}
