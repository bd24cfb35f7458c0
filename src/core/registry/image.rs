//! The registry image: a compiled registry written out so that the other VMs of the same
//! configuration adopt it instead of loading the configuration again.
//!
//! Envoy configures a plugin three times one after another (twice on the main thread, then on
//! each worker), and a worker serves nothing while it loads: for a million keys each load takes
//! seconds. The first VM to load a configuration writes its image to Envoy's shared data (the
//! adapter does, in pieces); the others find it by the configuration's fingerprint and read the
//! tables straight in, compiling only the few distinct policies again. An image can also be
//! compiled ahead (`compile`, tollgate-gen `--registry-image`) and delivered as the plugin's
//! configuration itself, so no VM parses JSON at all.
//!
//! What is in it: the configuration's `gateway` and `apis` as JSON, then its `plans` as JSON one
//! by one (read again the usual way, so APIs, plans and settings are exactly as a full load
//! makes them), every distinct policy of the contracts' chains as its spec (compiled again, each
//! once), the chains as lists of those policies, the string tables, the client ids front-coded
//! and the client, contract and key records (as varints, in groups, each written as what changed
//! from the one before where that is shorter), and last the fingerprint of all the bytes before
//! it. Which
//! environment variables the load read is recorded as digests of their values: a VM whose
//! environment differs loads the configuration itself. The image is only ever written after a
//! load that succeeded, and reading one checks every index and the closing fingerprint, so a
//! damaged or foreign image is refused rather than trusted.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Builder, ClientRecord, ContractRecord, KeyTable, Registry};
use crate::chain::Chain;
use crate::config::{Env, PolicySpec};
use crate::json::Problems;
use crate::policy::{kind_by_name, Policy};

/// Changes whenever the layout below does. The fingerprint of this crate's source is written
/// beside it (build.rs), so an image written by another build of tollgate in the same Envoy (a
/// module replaced by a live update keeps its predecessor's shared data) is never read.
const FORMAT: &str = "tollgate-registry-image/4";
pub const BUILD: &str = env!("TOLLGATE_CORE_SOURCE");

/// How the image is cut for Envoy's shared data: a reader holds one piece at a time, so adopting
/// a 40 MB image does not grow the VM by 40 MB.
pub const PIECE: usize = 1 << 20;

/// What a full load keeps for its image: the configuration's head as JSON and the spec of every
/// distinct policy compiled.
#[derive(Default)]
pub struct Recipe {
    /// `{"gateway": …, "apis": […], "plans": […]}` as the configuration had them.
    pub head: String,
    pub specs: Vec<(Rc<dyn Policy>, PolicySpec)>,
}

/// The environment variables a load read, with what it found (noted from inside the load's
/// `Env`, which is a `Fn`).
#[derive(Default)]
pub struct EnvRecord(RefCell<BTreeMap<String, Option<String>>>);

impl EnvRecord {
    pub fn note(&self, name: &str, value: &Option<String>) {
        let mut seen = self.0.borrow_mut();
        if !seen.contains_key(name) {
            seen.insert(name.to_string(), value.clone());
        }
    }
}

fn value_digest(value: &Option<String>) -> [u8; 32] {
    match value {
        Some(v) => Sha256::digest(format!("={v}").as_bytes()).into(),
        None => [0; 32],
    }
}

/// A 128-bit fingerprint of the configuration's bytes, fed a piece at a time. Not a
/// cryptographic hash (the configuration is the operator's, not an attacker's), but one with a
/// guarantee: 32-byte blocks feed four independent lanes a word each (independent, so V8 runs
/// them side by side), every step is a bijection of its lane for a given word and of the word
/// for a given lane, and the lanes fold into the result by bijections too, so two
/// configurations that differ in any one word always get different fingerprints; the length
/// is folded in as well. It runs at several GB/s (19 MB in 7 ms in V8 under Node); SHA-256 would
/// take seconds for 200 MB in wasm.
#[derive(Clone)]
pub struct Fingerprint {
    lanes: [u64; 4],
    len: u64,
    tail: [u8; 32],
    tail_len: usize,
}

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint {
            lanes: [
                0x243F_6A88_85A3_08D3,
                0x1319_8A2E_0370_7344,
                0xA409_3822_299F_31D0,
                0x082E_FA98_EC4E_6C89,
            ],
            len: 0,
            tail: [0; 32],
            tail_len: 0,
        }
    }
}

/// A bijection of `x` for a given `w`, and of `w` for a given `x`.
#[inline]
fn step(x: u64, w: u64) -> u64 {
    let m = (x ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    m ^ (m >> 29)
}

impl Fingerprint {
    #[inline]
    fn block(&mut self, b: &[u8]) {
        for (lane, word) in self.lanes.iter_mut().zip(b.chunks_exact(8)) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            *lane = step(*lane, u64::from_le_bytes(w));
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.tail_len > 0 {
            let take = (32 - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&data[..take]);
            self.tail_len += take;
            data = &data[take..];
            if self.tail_len < 32 {
                return;
            }
            let tail = self.tail;
            self.block(&tail);
            self.tail_len = 0;
        }
        let mut blocks = data.chunks_exact(32);
        for b in &mut blocks {
            self.block(b);
        }
        let rest = blocks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    /// The fingerprint as 32 hex digits.
    pub fn hex(&self) -> String {
        let mut f = self.clone();
        let mut last = [0u8; 32];
        last[..f.tail_len].copy_from_slice(&f.tail[..f.tail_len]);
        // The tail's length is in `len`, so zero padding cannot collide with real zeros.
        f.block(&last);
        let [a, b, c, d] = f.lanes;
        let h1 = step(step(step(step(f.len, a), b), c), d);
        let h2 = step(step(step(step(!f.len, d), c), b), a.rotate_left(32));
        format!("{h1:016x}{h2:016x}")
    }
}

/// Whether a configuration starts as an image does (its format's name, length-prefixed) rather
/// than as JSON: a JSON document starts with `{` or white space.
pub fn is_image(start: &[u8]) -> bool {
    const NAME: &[u8] = b"tollgate-registry-image/";
    // The name's length is a little-endian u32 below 256: JSON text never holds a zero byte.
    start.len() >= 4 + NAME.len() && start[1..4] == [0, 0, 0] && start[4..].starts_with(NAME)
}

/// How many bytes of a configuration `is_image` needs.
pub const IMAGE_MARK: usize = 4 + FORMAT.len();

/// Compiles a configuration into an image to deliver in its place (`tollgate-gen
/// --registry-image`): every VM then reads the tables straight in, and no API key is in
/// Envoy's configuration, only digests of them. Returns the image and the load's warnings.
/// Refused when the configuration reads environment variables: their values are the VM's,
/// which the compiler cannot know.
pub fn compile(config: &[u8]) -> Result<(Vec<u8>, Vec<String>), Vec<String>> {
    let seen = EnvRecord::default();
    let env = |name: &str| {
        seen.note(name, &None);
        None
    };
    let loaded = crate::load(config, &env);
    let read: Vec<String> = seen.0.borrow().keys().cloned().collect();
    if !read.is_empty() {
        return Err(vec![environment_refused(&read)]);
    }
    let mut loaded = loaded?;
    let image = image_of(&mut loaded.registry).map_err(|e| vec![e])?;
    Ok((image, loaded.warnings))
}

/// The image of a registry loaded with no environment variable read (its recipe is taken),
/// read back once: an image a VM would refuse is never handed out.
pub fn image_of(registry: &mut Registry) -> Result<Vec<u8>, String> {
    let recipe = registry
        .take_recipe()
        .ok_or("the registry keeps no recipe")?;
    let mut image = Vec::new();
    write(registry, &recipe, &EnvRecord::default(), &mut |piece| {
        image.extend_from_slice(piece);
        true
    })?;
    let mut pieces = image.chunks(PIECE);
    read(&crate::config::no_env, &mut || {
        pieces.next().map(<[u8]>::to_vec)
    })
    .map_err(|why| format!("its image does not read back: {why}"))?;
    Ok(image)
}

/// Why a registry that reads the environment variables `names` is not compiled.
pub fn environment_refused(names: &[String]) -> String {
    format!(
        "the registry reads environment variables ({}), whose values only Envoy's VM has: deliver it as JSON, not as an image",
        names.join(", ")
    )
}

/// Writes the image, handing it over a piece of about `PIECE` bytes at a time (`emit` returns
/// false to give up). Fails if a chain holds a policy the recipe has no spec for.
pub fn write(
    registry: &Registry,
    recipe: &Recipe,
    env: &EnvRecord,
    emit: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<(), String> {
    let spec_index: std::collections::HashMap<*const (), u32> = recipe
        .specs
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (Rc::as_ptr(p) as *const (), i as u32))
        .collect();
    let mut w = Writer {
        buf: Vec::with_capacity(PIECE + 4096),
        emit,
        failed: false,
        written: Fingerprint::default(),
    };
    w.str(FORMAT);
    w.str(BUILD);
    let seen = env.0.borrow();
    w.u32(seen.len() as u32);
    for (name, value) in seen.iter() {
        w.str(name);
        w.bytes(&value_digest(value));
    }
    // The head without its plans, then the plans one by one: a reader compiles a plan at a
    // time (a thousand plans take tens of milliseconds, more than one slice between requests).
    let mut head: Value = serde_json::from_str(&recipe.head)
        .map_err(|e| format!("the configuration's head does not read back: {e}"))?;
    let plans = match head.get_mut("plans").map(Value::take) {
        Some(Value::Array(plans)) => plans,
        Some(Value::Null) | None => Vec::new(),
        Some(_) => return Err("the configuration's plans are not an array".into()),
    };
    w.str(&head.to_string());
    w.u32(plans.len() as u32);
    for plan in &plans {
        w.str(&plan.to_string());
    }
    w.u32(recipe.specs.len() as u32);
    for (_, spec) in &recipe.specs {
        w.str(&spec.path);
        w.str(spec.kind.id);
        w.str(spec.config_field);
        w.str(&spec.config.to_string());
    }
    w.u32(registry.chains.len() as u32);
    for chain in &registry.chains {
        w.u32(chain.len() as u32);
        for p in chain.policies() {
            let Some(&i) = spec_index.get(&(Rc::as_ptr(p) as *const ())) else {
                return Err("a chain holds a policy without a spec".into());
            };
            w.u32(i);
        }
    }
    w.u32(registry.strings.strings.len() as u32);
    for s in &registry.strings.strings {
        w.str(s);
    }
    // The client ids front-coded (each as the bytes it shares with the one before and the
    // rest: sequential ids such as `client123456` take a byte or two), the rests first, as one
    // string; the client records say how much of each is shared and how much is rest.
    let ids = registry.client_ids.as_bytes();
    let fronts = || {
        let mut previous: &[u8] = &[];
        registry.clients.iter().map(move |c| {
            let start = c.id_start as usize;
            let id = ids.get(start..start.saturating_add(c.id_len as usize));
            let shared = shared_prefix(previous, id.unwrap_or_default());
            previous = id.unwrap_or_default();
            id.map(|id| (shared, &id[shared..]))
        })
    };
    if ids.len() > MAX_CLIENT_IDS {
        return Err("the client ids are past what an image holds".into());
    }
    let mut rests_len = 0;
    for front in fronts() {
        let (_, rest) = front.ok_or("a client record points outside the client ids")?;
        rests_len += rest.len();
    }
    w.u32(ids.len() as u32);
    w.u32(rests_len as u32);
    for (_, rest) in fronts().flatten() {
        w.bytes(rest);
        w.piece();
    }
    // Records as LEB128 varints in groups; what follows from the order is left out: a client's
    // id and contracts start where the previous client's end (as the loader appends them).
    // What most clients share with the one before (organization, version, one contract, the
    // next source index) is a flag instead of a number.
    w.u32(registry.clients.len() as u32);
    let (mut id_end, mut contracts_end) = (0u32, 0u32);
    let mut before = ClientRecord::default();
    let mut in_order = true;
    let mut clients = registry.clients.iter().zip(fronts().flatten());
    w.groups(registry.clients.len(), &mut |g| {
        if let Some((c, (shared, rest))) = clients.next() {
            in_order &= c.id_start == id_end
                && c.first_contract == contracts_end
                && c.source >= before.source;
            id_end = c.id_start.wrapping_add(c.id_len);
            contracts_end = c.first_contract.wrapping_add(c.contract_count);
            let delta = c.source.wrapping_sub(before.source);
            let fields = [
                (c.org != before.org, c.org),
                (c.version != before.version, c.version),
                (c.contract_count != 1, c.contract_count),
                (delta != 1, delta),
            ];
            let flags =
                (fields.iter().enumerate()).fold(0, |f, (i, (set, _))| f | u32::from(*set) << i);
            for v in [flags, shared as u32, rest.len() as u32] {
                varint(g, v);
            }
            for (_, v) in fields.iter().filter(|(set, _)| *set) {
                varint(g, *v);
            }
            before = *c;
        }
    });
    if !in_order {
        return Err("the client records are not in the order the loader makes them".into());
    }
    // Contracts as the difference from the one before: neighbours often share their API, plan
    // and chain, or count up.
    w.u32(registry.contracts.len() as u32);
    let mut before = [0u32; 3];
    let mut contracts = registry.contracts.iter();
    w.groups(registry.contracts.len(), &mut |g| {
        if let Some(c) = contracts.next() {
            let now = [c.api, c.plan.wrapping_add(1), c.chain]; // NO_PLAN (u32::MAX) is 0
            for (v, b) in now.iter().zip(before) {
                varint(g, zigzag(v.wrapping_sub(b)));
            }
            before = now;
        }
    });
    // The keys in the table's slot order, so the adopting VM fills its table front to back.
    w.u32(registry.keys.len() as u32);
    w.u32(registry.keys.capacity() as u32);
    let mut keys = registry.keys.entries();
    w.groups(registry.keys.len(), &mut |g| {
        if let Some((id, client)) = keys.next() {
            g.extend_from_slice(id);
            varint(g, client);
        }
    });
    w.str("end");
    // The fingerprint of every byte before it: a reader adopts only the bytes that were
    // written together (an image rewritten while it was read, or damaged, is refused).
    w.seal();
    w.flush();
    if w.failed {
        return Err("the image could not be stored".into());
    }
    Ok(())
}

struct Writer<'e> {
    buf: Vec<u8>,
    emit: &'e mut dyn FnMut(&[u8]) -> bool,
    failed: bool,
    /// The fingerprint of the pieces handed over so far.
    written: Fingerprint,
}

impl Writer<'_> {
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// A length-prefixed string; long ones are handed over as they are written.
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        for part in s.as_bytes().chunks(PIECE) {
            self.bytes(part);
            self.piece();
        }
    }

    /// Hands the buffer over once it holds a piece.
    fn piece(&mut self) {
        if self.buf.len() >= PIECE {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() && !self.failed {
            self.written.update(&self.buf);
            self.failed = !(self.emit)(&self.buf);
        }
        self.buf.clear();
    }

    /// `count` records, each appended by a call of `put`, in groups of about `GROUP` bytes,
    /// each group `[records u32][bytes u32][bytes]`, so a reader decodes from one slice at a
    /// time. (Not generic: one copy of this loop in the module.)
    fn groups(&mut self, count: usize, put: &mut dyn FnMut(&mut Vec<u8>)) {
        let mut group = Vec::with_capacity(GROUP + MAX_RECORD);
        let mut n = 0u32;
        for _ in 0..count {
            put(&mut group);
            n += 1;
            if group.len() >= GROUP {
                self.group(n, &group);
                group.clear();
                n = 0;
            }
        }
        if n > 0 {
            self.group(n, &group);
        }
    }

    fn group(&mut self, n: u32, group: &[u8]) {
        self.u32(n);
        self.u32(group.len() as u32);
        self.bytes(group);
        self.piece();
    }

    /// Appends the fingerprint of everything written before it.
    fn seal(&mut self) {
        let mut f = self.written.clone();
        f.update(&self.buf);
        self.bytes(f.hex().as_bytes());
    }
}

/// Reads the pieces `next` hands over, one at a time.
struct Reader<'n> {
    buf: Vec<u8>,
    pos: usize,
    next: Box<dyn FnMut() -> Option<Vec<u8>> + 'n>,
    /// The fingerprint of the bytes read before `buf[hashed..]`.
    read: Fingerprint,
    hashed: usize,
}

impl Reader<'_> {
    /// Counts the bytes read so far into the fingerprint.
    fn seal(&mut self) {
        if let Some(read) = self.buf.get(self.hashed..self.pos) {
            self.read.update(read);
        }
        self.hashed = self.pos;
    }

    /// Makes `n` bytes available at `pos`.
    fn need(&mut self, n: usize) -> Result<(), String> {
        while self.buf.len() - self.pos < n {
            let piece = (self.next)().ok_or("the image ends early")?;
            if piece.is_empty() {
                return Err("the image ends early".into());
            }
            self.seal();
            self.hashed = 0;
            if self.pos == self.buf.len() {
                self.buf = piece; // nothing left over: take the piece as it is, no copy
            } else {
                self.buf.drain(..self.pos);
                self.buf.extend_from_slice(&piece);
            }
            self.pos = 0;
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        self.need(n)?;
        let start = self.pos;
        self.pos += n;
        self.buf
            .get(start..start + n)
            .ok_or_else(|| "the image ends early".to_string())
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(u32::from_le_bytes(a))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        let mut s = Vec::with_capacity(n.min(PIECE));
        let mut left = n;
        while left > 0 {
            let part = left.min(PIECE);
            s.extend_from_slice(self.take(part)?);
            left -= part;
        }
        String::from_utf8(s).map_err(|_| "a string is not UTF-8".to_string())
    }

    /// Hands the records of the next group written by `Writer::groups` to `f`, at most `left`
    /// of them; how many it held.
    fn group(
        &mut self,
        left: usize,
        mut f: impl FnMut(&mut Group) -> Result<(), String>,
    ) -> Result<usize, String> {
        let records = self.u32()? as usize;
        let len = self.u32()? as usize;
        if records == 0 || records > left || len > GROUP + MAX_RECORD {
            return Err("a record group does not fit".into());
        }
        let mut group = Group {
            bytes: self.take(len)?,
            pos: 0,
        };
        for _ in 0..records {
            f(&mut group)?;
        }
        if group.pos != len {
            return Err("a record group does not end where it should".into());
        }
        Ok(records)
    }

    /// A count, refused past `limit`; what it reserves up front is capped by `room`, so a damaged
    /// count cannot make the reader reserve gigabytes.
    fn count(&mut self, limit: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n > limit {
            return Err(format!("a count of {n} is past the limit of {limit}"));
        }
        Ok(n)
    }
}

/// How many bytes of records a group holds (about), and the most one record takes.
const GROUP: usize = 1 << 16;
const MAX_RECORD: usize = 32;

/// How many bytes `a` and `b` start with alike.
fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A difference of two u32s (wrapping) as a small number when it is small either way.
fn zigzag(d: u32) -> u32 {
    (d << 1) ^ ((d as i32 >> 31) as u32)
}

/// The inverse of `zigzag`.
fn unzigzag(z: u32) -> u32 {
    (z >> 1) ^ (z & 1).wrapping_neg()
}

/// Appends `v` as a LEB128 varint.
fn varint(out: &mut Vec<u8>, mut v: u32) {
    while v > 0x7F {
        out.push((v as u8 & 0x7F) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads the records of one group.
struct Group<'b> {
    bytes: &'b [u8],
    pos: usize,
}

impl Group<'_> {
    /// Most numbers in an image take one byte: those are read without a loop.
    #[inline(always)]
    fn varint(&mut self) -> Result<u32, String> {
        match self.bytes.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(u32::from(b))
            }
            _ => self.long_varint(),
        }
    }

    #[inline(never)]
    fn long_varint(&mut self) -> Result<u32, String> {
        let mut v: u32 = 0;
        for shift in (0..35).step_by(7) {
            let b = *self
                .bytes
                .get(self.pos)
                .ok_or("a record group ends early")?;
            self.pos += 1;
            if shift == 28 && b > 0x0F {
                return Err("a number in a record is too large".into());
            }
            v |= u32::from(b & 0x7F) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("a number in a record is too large".into())
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let b = self
            .bytes
            .get(self.pos..self.pos + N)
            .ok_or("a record group ends early")?;
        self.pos += N;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }
}

/// Client ids as the writer front-codes them: each is the bytes it shares with the one before
/// and its rest, taken from `rests` in order.
#[derive(Default)]
struct FrontCoded {
    rests: Vec<u8>,
    /// How much of `rests` the ids took so far.
    taken: usize,
    ids: Vec<u8>,
    /// How long the ids are in all, as the image says.
    total: usize,
    /// Where the last id starts in `ids`.
    last: usize,
}

impl FrontCoded {
    /// The next id, as its start and length in `ids`.
    fn next(&mut self, shared: u32, rest: u32) -> Result<(u32, u32), String> {
        let (shared, rest) = (shared as usize, rest as usize);
        let start = self.ids.len();
        if shared > start - self.last {
            return Err("a client id shares more than the one before holds".into());
        }
        let end = self.taken.saturating_add(rest);
        let rest_bytes = (self.rests.get(self.taken..end)).ok_or("the client ids end early")?;
        // The announced total bounds what sharing can make of a few bytes.
        if start + shared + rest > self.total {
            return Err("the client ids are longer than the image says".into());
        }
        self.ids.extend_from_within(self.last..self.last + shared);
        self.ids.extend_from_slice(rest_bytes);
        self.taken = end;
        self.last = start;
        Ok((start as u32, (shared + rest) as u32))
    }

    fn finish(self) -> Result<String, String> {
        if self.ids.len() != self.total || self.taken != self.rests.len() {
            return Err("the client ids do not add up".into());
        }
        String::from_utf8(self.ids).map_err(|_| "a string is not UTF-8".to_string())
    }
}

/// The client ids of an image take at most this many bytes in all.
const MAX_CLIENT_IDS: usize = 1 << 28;

/// At most this many records of any kind (clients, contracts, keys): far above any registry a
/// wasm32 VM can hold.
const MAX_RECORDS: usize = 1 << 28;

/// How much room to make up front for `n` records that a count in the image announces: the
/// count is not trusted to allocate more than a few million (a damaged one must not make the
/// VM reserve gigabytes and abort); past that the tables grow as records actually arrive.
fn room(n: usize) -> usize {
    n.min(1 << 20)
}

/// Whether the image in `pieces` ends with the fingerprint of the bytes before it, as one read
/// to its end would find: a VM that reads the tables later (`Reading::step`) checks this first,
/// so a damaged image is refused when the configuration is, not at the first request.
pub fn sealed(pieces: &[Vec<u8>]) -> Result<(), String> {
    let total: usize = pieces.iter().map(Vec::len).sum();
    let body = total
        .checked_sub(FINGERPRINT_LEN)
        .ok_or("the image ends early")?;
    let mut f = Fingerprint::default();
    let mut seal = Vec::with_capacity(FINGERPRINT_LEN);
    let mut at = 0;
    for piece in pieces {
        let hashed = body.saturating_sub(at).min(piece.len());
        f.update(&piece[..hashed]);
        seal.extend_from_slice(&piece[hashed..]);
        at += piece.len();
    }
    if seal != f.hex().as_bytes() {
        return Err("its bytes are not the ones written together (changed or damaged)".into());
    }
    Ok(())
}

/// The length of `Fingerprint::hex`.
const FINGERPRINT_LEN: usize = 32;

/// Builds the registry from an image; `Err` says why it cannot be used (the caller then loads
/// the configuration instead).
pub fn read(env: Env, next: &mut dyn FnMut() -> Option<Vec<u8>>) -> Result<Registry, String> {
    let mut reading = Reading::new(env, Box::new(next));
    loop {
        if let Some(registry) = reading.step(&mut || true)? {
            return Ok(registry);
        }
    }
}

/// An image read a slice at a time, so a VM can read it between requests. `accept` reads
/// everything a configuration is accepted or refused on: the format, the build, the
/// environment, the gateway, APIs and plans, every distinct policy (compiled), the chains and
/// the interned strings. `step` reads on for as long as `more()` says (asked between policies,
/// pieces of the client ids and record groups of about 64 KiB): the client, contract and key
/// tables, then the closing fingerprint and the index checks.
pub struct Reading<'e> {
    r: Reader<'e>,
    env: Env<'e>,
    builder: Option<Builder<'e>>,
    stage: Stage,
}

/// Where `step` goes on from.
enum Stage {
    Head,
    Plans {
        next: usize,
        count: usize,
    },
    Policies {
        left: usize,
        policies: Vec<Rc<dyn Policy>>,
    },
    Chains {
        policies: Vec<Rc<dyn Policy>>,
    },
    ClientIds {
        /// How long the ids are in all and how many bytes of their rests are left to read,
        /// once read.
        sizes: Option<(usize, usize)>,
        rests: Vec<u8>,
    },
    Clients {
        left: usize,
        ids: FrontCoded,
        contracts_end: u32,
        before: ClientRecord,
    },
    Contracts {
        left: usize,
        before: [u32; 3],
    },
    KeyTable {
        keys: usize,
        slots: usize,
        zeroed: Vec<u8>,
    },
    Keys {
        left: usize,
        table: KeyTable,
        repeated: bool,
    },
    End,
    Check {
        clients: usize,
        contracts: usize,
    },
    Done,
}

impl<'e> Reading<'e> {
    /// Reads nothing yet: `next` hands over the image's bytes, a piece at a time, as it is read.
    pub fn new(env: Env<'e>, next: Box<dyn FnMut() -> Option<Vec<u8>> + 'e>) -> Reading<'e> {
        Reading {
            r: Reader {
                buf: Vec::new(),
                pos: 0,
                next,
                read: Fingerprint::default(),
                hashed: 0,
            },
            env,
            builder: None,
            stage: Stage::Head,
        }
    }

    /// Reads on to the tables: what a configuration is accepted or refused on.
    pub fn accept(&mut self) -> Result<(), String> {
        self.read_on(&mut || true, true).map(|_| ())
    }

    /// Reads on while `more()`; the registry once the image is read to its end and checked.
    /// After an `Err` the reading is over.
    pub fn step(&mut self, more: &mut dyn FnMut() -> bool) -> Result<Option<Registry>, String> {
        self.read_on(more, false)
    }

    fn read_on(
        &mut self,
        more: &mut dyn FnMut() -> bool,
        to_tables: bool,
    ) -> Result<Option<Registry>, String> {
        let result = self.advance(more, to_tables);
        if result.is_err() {
            self.stage = Stage::Done;
        }
        result
    }

    fn advance(
        &mut self,
        more: &mut dyn FnMut() -> bool,
        to_tables: bool,
    ) -> Result<Option<Registry>, String> {
        let Reading {
            r,
            env,
            builder,
            stage,
        } = self;
        loop {
            match stage {
                Stage::Head => {
                    let format = r.string()?;
                    if format != FORMAT {
                        return Err(format!(
                            "an image of format {format:?}; this filter reads {FORMAT:?}"
                        ));
                    }
                    let build = r.string()?;
                    if build != BUILD {
                        return Err(format!(
                            "compiled by tollgate build {build}; this filter is build {BUILD} (compile the registry again with the tollgate-gen of this filter's release)"
                        ));
                    }
                    for _ in 0..r.count(MAX_RECORDS)? {
                        let name = r.string()?;
                        let digest = r.take(32)?;
                        if digest != value_digest(&env(&name)) {
                            return Err(format!("environment variable {name} differs"));
                        }
                    }
                    let head = r.string()?;
                    let mut problems = Problems::default();
                    *builder = Some(
                        crate::config::load_head(head.as_bytes(), *env, &mut problems)
                            .filter(|_| problems.is_ok())
                            .ok_or("its APIs or settings do not load")?,
                    );
                    *stage = Stage::Plans {
                        next: 0,
                        count: r.count(MAX_RECORDS)?,
                    };
                }
                Stage::Plans { next, count } => {
                    let builder = built(builder)?;
                    while *next < *count {
                        if !more() {
                            return Ok(None);
                        }
                        let mut problems = Problems::default();
                        let text = r.string()?;
                        crate::config::load_plan(&text, *next, *env, builder, &mut problems);
                        if let Some(problem) = problems.errors.first() {
                            return Err(format!("a plan does not load: {problem}"));
                        }
                        *next += 1;
                    }
                    *stage = Stage::Policies {
                        left: r.count(MAX_RECORDS)?,
                        policies: Vec::new(),
                    };
                }
                Stage::Policies { left, policies } => {
                    let compiler = &mut built(builder)?.compiler;
                    while *left > 0 {
                        if !more() {
                            return Ok(None);
                        }
                        let path = r.string()?;
                        let kind = kind_by_name(&r.string()?).ok_or("unknown policy kind")?;
                        let config_field = match r.string()?.as_str() {
                            "config" => "config",
                            "policyJsonConfig" => "policyJsonConfig",
                            _ => return Err("unknown configuration field".into()),
                        };
                        let config: Value = serde_json::from_str(&r.string()?)
                            .map_err(|e| format!("a policy spec: {e}"))?;
                        let spec = PolicySpec {
                            path,
                            kind,
                            config_field,
                            config,
                        };
                        // In a module built without a policy's code (tollgate-lite.wasm), this
                        // is where an image naming it is refused: the problem says which
                        // policy and why.
                        let mut problems = Problems::default();
                        let policy = compiler.compile(&spec, &mut problems).ok_or_else(|| {
                            format!("a policy does not compile: {}", problems.errors.join("; "))
                        })?;
                        policies.push(policy);
                        *left -= 1;
                    }
                    *stage = Stage::Chains {
                        policies: std::mem::take(policies),
                    };
                }
                Stage::Chains { policies } => {
                    let reg = &mut built(builder)?.registry;
                    let chains = r.count(MAX_RECORDS)?;
                    reg.chains.reserve_exact(room(chains));
                    for _ in 0..chains {
                        let n = r.count(MAX_RECORDS)?;
                        let mut chain = Vec::with_capacity(room(n).min(64));
                        for _ in 0..n {
                            let i = r.u32()? as usize;
                            chain.push(policies.get(i).ok_or("a chain names no policy")?.clone());
                        }
                        reg.chains.push(Chain::new(chain));
                    }
                    let strings = r.count(MAX_RECORDS)?;
                    reg.strings.strings.clear();
                    reg.strings.index.clear();
                    for _ in 0..strings {
                        let s = r.string()?;
                        reg.strings.lookup(&s);
                    }
                    if reg.strings.strings.len() != strings {
                        return Err("the interned strings repeat".into());
                    }
                    *stage = Stage::ClientIds {
                        sizes: None,
                        rests: Vec::new(),
                    };
                    if to_tables {
                        return Ok(None);
                    }
                }
                Stage::ClientIds { sizes, rests } => {
                    // The rests of the front-coded client ids, one string (a megabyte or more
                    // for a million clients): read a piece at a time.
                    let (total, left) = match sizes {
                        Some((total, left)) => (*total, left),
                        None => {
                            let total = r.count(MAX_CLIENT_IDS)?;
                            let n = r.count(total)?;
                            // All at once (growing would copy megabytes in one slice), but no
                            // more than a damaged length could make the VM hold for nothing.
                            rests.reserve_exact(n.min(1 << 26));
                            let (_, left) = sizes.insert((total, n));
                            (total, left)
                        }
                    };
                    while *left > 0 {
                        if !more() {
                            return Ok(None);
                        }
                        let part = (*left).min(PIECE);
                        rests.extend_from_slice(r.take(part)?);
                        *left -= part;
                    }
                    let left = r.count(MAX_RECORDS)?;
                    built(builder)?.registry.clients.reserve_exact(room(left));
                    *stage = Stage::Clients {
                        left,
                        ids: FrontCoded {
                            rests: std::mem::take(rests),
                            taken: 0,
                            ids: Vec::with_capacity(total.min(1 << 26)),
                            total,
                            last: 0,
                        },
                        contracts_end: 0,
                        before: ClientRecord::default(),
                    };
                }
                Stage::Clients {
                    left,
                    ids,
                    contracts_end,
                    before,
                } => {
                    let reg = &mut built(builder)?.registry;
                    while *left > 0 {
                        if !more() {
                            return Ok(None);
                        }
                        *left -= r.group(*left, |g| {
                            let flags = g.varint()?;
                            if flags > 0b1111 {
                                return Err("a client record has flags no writer sets".into());
                            }
                            let (id_start, id_len) = ids.next(g.varint()?, g.varint()?)?;
                            let mut field = |bit: u32, otherwise: u32| {
                                if flags & bit != 0 {
                                    g.varint()
                                } else {
                                    Ok(otherwise)
                                }
                            };
                            let record = ClientRecord {
                                org: field(1, before.org)?,
                                version: field(2, before.version)?,
                                id_start,
                                id_len,
                                first_contract: *contracts_end,
                                contract_count: field(4, 1)?,
                                source: before.source.wrapping_add(field(8, 1)?),
                            };
                            // Past u32 only in a damaged image; `check` then refuses the record.
                            *contracts_end = contracts_end.wrapping_add(record.contract_count);
                            reg.clients.push(record);
                            *before = record;
                            Ok(())
                        })?;
                    }
                    reg.client_ids = std::mem::take(ids).finish()?;
                    let left = r.count(MAX_RECORDS)?;
                    reg.contracts.reserve_exact(room(left));
                    *stage = Stage::Contracts {
                        left,
                        before: [0; 3],
                    };
                }
                Stage::Contracts { left, before } => {
                    let reg = &mut built(builder)?.registry;
                    while *left > 0 {
                        if !more() {
                            return Ok(None);
                        }
                        *left -= r.group(*left, |g| {
                            for b in before.iter_mut() {
                                *b = b.wrapping_add(unzigzag(g.varint()?));
                            }
                            let [api, plan, chain] = *before;
                            reg.contracts.push(ContractRecord {
                                api,
                                plan: plan.wrapping_sub(1),
                                chain,
                            });
                            Ok(())
                        })?;
                    }
                    // A client record holds at most one key: more keys than clients is a
                    // damaged image (and must not size the table before any key has arrived).
                    let keys = r.count(reg.clients.len())?;
                    let slots = r.count(MAX_RECORDS)?;
                    // As large as a load makes it: room for every key (or client, as
                    // reserved), at most doubled.
                    let most = 2 * KeyTable::slots_for(keys.max(reg.clients.len()));
                    if slots % 8 != 0
                        || slots < KeyTable::slots_for(keys)
                        || slots > most
                        || slots.checked_mul(super::SLOT).is_none()
                    {
                        return Err("the key table's size does not fit its keys".into());
                    }
                    *stage = Stage::KeyTable {
                        keys,
                        slots,
                        zeroed: Vec::new(),
                    };
                }
                Stage::KeyTable {
                    keys,
                    slots,
                    zeroed,
                } => {
                    let bytes = std::mem::take(zeroed);
                    match KeyTable::zeroed(*slots, bytes, PIECE, more) {
                        Ok(table) => {
                            *stage = Stage::Keys {
                                left: *keys,
                                table,
                                repeated: false,
                            }
                        }
                        Err(so_far) => {
                            *zeroed = so_far;
                            return Ok(None);
                        }
                    }
                }
                Stage::Keys {
                    left,
                    table,
                    repeated,
                } => {
                    let reg = &mut built(builder)?.registry;
                    let client_count = reg.clients.len();
                    while *left > 0 {
                        if !more() {
                            return Ok(None);
                        }
                        *left -= r.group(*left, |g| {
                            let id = g.bytes::<16>()?;
                            let client = g.varint()?;
                            if client as usize >= client_count {
                                return Err("a key points to no client".into());
                            }
                            *repeated |= table.insert(id, client).is_err();
                            Ok(())
                        })?;
                    }
                    if *repeated {
                        return Err("a key repeats".into());
                    }
                    reg.keys = std::mem::take(table);
                    *stage = Stage::End;
                }
                Stage::End => {
                    if r.string()? != "end" {
                        return Err("the image does not end where it should".into());
                    }
                    r.seal();
                    let read = r.read.hex();
                    if r.take(read.len())? != read.as_bytes() {
                        return Err(
                            "its bytes are not the ones written together (changed or damaged)"
                                .into(),
                        );
                    }
                    if r.pos < r.buf.len() || (r.next)().is_some_and(|p| !p.is_empty()) {
                        return Err("bytes follow the image".into());
                    }
                    *stage = Stage::Check {
                        clients: 0,
                        contracts: 0,
                    };
                }
                Stage::Check { clients, contracts } => {
                    let reg = &built(builder)?.registry;
                    while *clients < reg.clients.len() || *contracts < reg.contracts.len() {
                        if !more() {
                            return Ok(None);
                        }
                        check(reg, clients, contracts)?;
                    }
                    *stage = Stage::Done;
                    let builder = builder.take().ok_or("the image was read already")?;
                    return builder
                        .finish(&mut Problems::default())
                        .map(Some)
                        .ok_or_else(|| "it does not build".into());
                }
                Stage::Done => return Err("the image was read already".into()),
            }
        }
    }
}

fn built<'a, 'e>(builder: &'a mut Option<Builder<'e>>) -> Result<&'a mut Builder<'e>, String> {
    builder
        .as_mut()
        .ok_or_else(|| "the image was read already".to_string())
}

/// Every index in the tables points inside them, so lookups never fail on an adopted registry
/// where they would not on a loaded one. Checks the next `CHECKED` clients and contracts from
/// `clients` and `contracts` on, and moves them past those.
fn check(reg: &Registry, clients: &mut usize, contracts: &mut usize) -> Result<(), String> {
    const CHECKED: usize = 1 << 14;
    let strings = reg.strings.strings.len();
    let upto = reg.clients.len().min(*clients + CHECKED);
    for c in reg.clients.get(*clients..upto).unwrap_or_default() {
        // In u64: on wasm32 a damaged start plus length could wrap around in usize.
        let ids_end = u64::from(c.id_start) + u64::from(c.id_len);
        let contracts_end = u64::from(c.first_contract) + u64::from(c.contract_count);
        if c.org as usize >= strings
            || c.version as usize >= strings
            || ids_end > reg.client_ids.len() as u64
            || !reg.client_ids.is_char_boundary(c.id_start as usize)
            || !reg.client_ids.is_char_boundary(ids_end as usize)
            || contracts_end > reg.contracts.len() as u64
        {
            return Err("a client record points outside the tables".into());
        }
    }
    *clients = upto;
    let upto = reg.contracts.len().min(*contracts + CHECKED);
    for c in reg.contracts.get(*contracts..upto).unwrap_or_default() {
        if c.api as usize >= reg.apis.len()
            || (c.plan != super::NO_PLAN && c.plan as usize >= strings)
            || c.chain as usize >= reg.chains.len()
        {
            return Err("a contract record points outside the tables".into());
        }
    }
    *contracts = upto;
    // Keys pointing to no client are refused as they are read.
    Ok(())
}

impl Builder<'_> {
    /// Keeps what an image needs: `head` is the configuration's gateway, APIs and plans.
    pub fn keep_recipe(&mut self, head: String) {
        self.recipe_head = Some(head);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Bytes;
    use std::collections::HashMap;

    const KEYS: &[&str] = &["k1", "k2", "k3", "k4", "nobody"];

    /// A registry with every kind of contract: a tollgate plan with client policies, an Apiman
    /// export's aggregated policies (twice, shared), a hashed key, a public API, settings.
    fn config() -> String {
        let hex: String = crate::registry::key_digest("k4")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let hashed = format!("sha256:{hex}");
        serde_json::json!({
            "gateway": {"trustedProxies": ["10.0.0.0/8"]},
            "plans": [{"planId": "gold", "policies": [
                {"policy": "simple-header", "config": {"addHeaders": [
                    {"headerName": "X-Plan", "headerValue": "gold", "applyTo": "Request"}]}}]}],
            "apis": [
                {"organizationId": "o", "apiId": "a", "version": "1", "endpoint": "http://h:1/",
                 "apiPolicies": [{"policy": "ip-allowlist", "config": {"ipList": ["0.0.0.0/0"]}}]},
                {"organizationId": "o", "apiId": "p", "version": "1", "publicAPI": true,
                 "endpoint": "http://h:2/"}],
            "clients": [
                {"organizationId": "o", "clientId": "c1", "version": "1", "apiKey": "k1",
                 "policies": [{"policy": "ip-blocklist", "config": {"ipList": ["192.0.2.1"]}}],
                 "contracts": [{"apiOrgId": "o", "apiId": "a", "apiVersion": "1", "plan": "gold"}]},
                {"organizationId": "o", "clientId": "c2", "version": "2", "apiKey": "k2",
                 "contracts": [{"apiOrgId": "o", "apiId": "a", "apiVersion": "1", "plan": "Gold",
                   "policies": [{"policyImpl": "class:io.apiman.gateway.engine.policies.IPWhitelistPolicy",
                                 "policyJsonConfig": "{\"ipList\":[\"10.0.0.0/8\"]}"}]}]},
                {"organizationId": "o", "clientId": "c3", "version": "1", "apiKey": "k3",
                 "contracts": [{"apiOrgId": "o", "apiId": "a", "apiVersion": "1", "plan": "Gold",
                   "policies": [{"policyImpl": "class:io.apiman.gateway.engine.policies.IPWhitelistPolicy",
                                 "policyJsonConfig": "{\"ipList\":[\"10.0.0.0/8\"]}"}]},
                   {"apiOrgId": "o", "apiId": "p", "apiVersion": "1", "plan": "gold"}]},
                {"organizationId": "o", "clientId": "c4", "version": "1", "apiKeyHash": hashed,
                 "contracts": [{"apiOrgId": "o", "apiId": "a", "apiVersion": "1", "plan": "gold"}]}]
        })
        .to_string()
    }

    fn load(text: &str, env: Env) -> Registry {
        crate::load_document(&Bytes(text.as_bytes()), env)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .registry
    }

    /// The image in pieces as the writer hands them over.
    fn image_of(registry: &mut Registry, env: &EnvRecord) -> Vec<Vec<u8>> {
        let recipe = registry.take_recipe().expect("a recipe");
        written(registry, &recipe, env)
    }

    /// The image of `registry` as `recipe` describes it, in the writer's pieces.
    fn written(registry: &Registry, recipe: &Recipe, env: &EnvRecord) -> Vec<Vec<u8>> {
        let mut pieces = Vec::new();
        write(registry, recipe, env, &mut |p| {
            pieces.push(p.to_vec());
            true
        })
        .unwrap();
        pieces
    }

    fn read_pieces(pieces: Vec<Vec<u8>>, env: Env) -> Result<Registry, String> {
        let mut it = pieces.into_iter();
        read(env, &mut || it.next())
    }

    /// Everything a request can see of a registry, with policies named by kind and numbered in
    /// order of first appearance (so which chains share a policy shows too).
    fn describe(r: &Registry) -> String {
        let mut ids: HashMap<*const (), usize> = HashMap::new();
        let mut name = |p: &Rc<dyn Policy>| {
            let n = ids.len();
            let n = *ids.entry(Rc::as_ptr(p) as *const ()).or_insert(n);
            format!("{}#{n}", p.id())
        };
        let mut out = format!("{:?}\n", r.settings.trusted_proxies);
        for a in r.apis() {
            let chain: Vec<String> = a.chain.policies().iter().map(&mut name).collect();
            out += &format!("api {} public={} {chain:?}\n", a.api.api_id, a.api.public);
        }
        for key in KEYS {
            let Some((i, c)) = r.client_by_key(key) else {
                out += &format!("{key}: none\n");
                continue;
            };
            out += &format!("{key}: {i} {:?}\n", c.identity);
            for api in 0..r.apis().len() {
                if let Some(k) = c.contract(api) {
                    let chain: Vec<String> = k.chain.policies().iter().map(&mut name).collect();
                    out += &format!("  api {api} plan {:?} {chain:?}\n", k.plan);
                }
            }
        }
        out + &format!(
            "chains {} clients {} call targets {} tickers {}",
            r.chain_count(),
            r.client_count(),
            r.call_targets().len(),
            r.tickers().len()
        )
    }

    #[test]
    fn an_adopted_image_answers_like_the_loaded_registry() {
        let mut loaded = load(&config(), &crate::config::no_env);
        let pieces = image_of(&mut loaded, &EnvRecord::default());
        let adopted = read_pieces(pieces, &crate::config::no_env).unwrap();
        assert!(describe(&loaded).contains("k4: 3"), "{}", describe(&loaded));
        assert_eq!(describe(&adopted), describe(&loaded));
    }

    #[test]
    fn an_image_whose_policy_does_not_compile_is_refused_naming_the_policy_and_problem() {
        let mut loaded = load(&config(), &crate::config::no_env);
        let mut recipe = loaded.take_recipe().expect("a recipe");
        let (_, spec) = (recipe.specs.iter_mut())
            .find(|(_, s)| s.kind.id == "ip-blocklist")
            .expect("the client's policy");
        spec.config = serde_json::json!({"ipList": ["not-an-ip"]});
        let pieces = written(&loaded, &recipe, &EnvRecord::default());
        let error = read_pieces(pieces, &crate::config::no_env).err().unwrap();
        assert!(
            error.starts_with("a policy does not compile: clients[0].policies[0] (ip-blocklist): \"not-an-ip\" is not an IP"),
            "{error}"
        );
    }

    #[test]
    fn an_image_reads_the_same_whatever_its_pieces() {
        let mut loaded = load(&config(), &crate::config::no_env);
        let whole = image_of(&mut loaded, &EnvRecord::default()).concat();
        for size in [1, 7, 64] {
            let pieces = whole.chunks(size).map(<[u8]>::to_vec).collect();
            let adopted = read_pieces(pieces, &crate::config::no_env).unwrap();
            assert_eq!(describe(&adopted), describe(&loaded), "pieces of {size}");
        }
    }

    /// `n` clients, each with a key and a contract under the plan `gold`.
    fn many_clients(n: usize) -> String {
        let clients: Vec<Value> = (0..n)
            .map(|i| {
                serde_json::json!({"organizationId": "o", "clientId": format!("c{i}"),
                    "version": "1", "apiKey": format!("key-{i}"),
                    "contracts": [{"apiOrgId": "o", "apiId": "a", "apiVersion": "1", "plan": "gold"}]})
            })
            .collect();
        let mut doc: Value = serde_json::from_str(&config()).unwrap();
        doc["clients"] = Value::Array(clients);
        doc.to_string()
    }

    /// Every client's identity and contracts, in order.
    fn all_clients(r: &Registry) -> Vec<String> {
        (0..r.client_count())
            .map(|i| {
                let c = r.client_at(i).expect("a client");
                let contracts: Vec<String> = (0..r.apis().len())
                    .filter_map(|api| Some(format!("{api}:{:?}", c.contract(api)?.plan)))
                    .collect();
                format!("{:?} {contracts:?}", c.identity)
            })
            .collect()
    }

    #[test]
    fn client_ids_that_share_bytes_with_the_one_before_read_back_exactly() {
        // Shared prefixes that end inside a character (é and ê share their first byte), ids
        // repeated under another version, one id the prefix of the next, long ones, and
        // clients with none, one or two contracts.
        let long = "x".repeat(70_000);
        let ids = [
            "é1",
            "ê2",
            "ê2",
            "ê",
            "ê23",
            "a",
            &long,
            &format!("{long}y"),
            "b",
        ];
        let contracts = |n: usize| -> Vec<Value> {
            (["a", "p"].iter().take(n))
                .map(|api| serde_json::json!({"apiOrgId": "o", "apiId": api, "apiVersion": "1", "plan": "gold"}))
                .collect()
        };
        let clients: Vec<Value> = (ids.iter().enumerate())
            .map(|(i, id)| {
                serde_json::json!({"organizationId": if i % 3 == 0 { "o" } else { "p" },
                    "clientId": id, "version": format!("{}", i % 2), "apiKey": format!("key-{i}"),
                    "contracts": contracts(i % 3)})
            })
            .collect();
        let mut doc: Value = serde_json::from_str(&config()).unwrap();
        doc["clients"] = Value::Array(clients);
        let mut loaded = load(&doc.to_string(), &crate::config::no_env);
        let adopted = read_pieces(
            image_of(&mut loaded, &EnvRecord::default()),
            &crate::config::no_env,
        )
        .unwrap();
        assert_eq!(all_clients(&loaded).len(), ids.len());
        assert_eq!(all_clients(&adopted), all_clients(&loaded));
    }

    #[test]
    fn an_image_holds_a_client_with_a_key_and_a_contract_in_little_more_than_its_key_digest() {
        let n = 20_000;
        let mut loaded = load(&many_clients(n), &crate::config::no_env);
        let whole = image_of(&mut loaded, &EnvRecord::default()).concat();
        let (head, _) = compile(config().as_bytes()).unwrap();
        // A key is 16 bytes of digest and its client's index; the client's id ("c123") shares
        // all but a byte or two with the one before, and its record and contract repeat the
        // one before.
        let per_client = (whole.len() - head.len()) as f64 / n as f64;
        assert!(per_client < 26.0, "{per_client:.1} bytes per client");
    }

    #[test]
    fn front_coded_ids_cannot_share_more_than_the_id_before_or_grow_past_their_total() {
        let mut ids = FrontCoded {
            rests: b"abcd".to_vec(),
            total: 6,
            ..FrontCoded::default()
        };
        assert_eq!(ids.next(0, 2), Ok((0, 2)));
        assert!(
            ids.next(3, 0).is_err(),
            "shares three bytes of a two-byte id"
        );
        assert_eq!(ids.next(2, 1), Ok((2, 3)));
        assert!(ids.next(3, 1).is_err(), "grows past the total of 6");
        assert!(ids.next(0, 2).is_err(), "takes more rest than there is");
        assert_eq!(ids.next(0, 1), Ok((5, 1)));
        assert_eq!(ids.finish(), Ok("ababcd".to_string()));
    }

    /// Reads on with one unit of work (a policy, a plan, a record group…) per step: how many
    /// steps it took, and the registry.
    fn read_a_unit_per_step(reading: &mut Reading) -> (usize, Registry) {
        let mut steps = 0;
        loop {
            steps += 1;
            let mut asked = 0;
            let step = reading.step(&mut || {
                asked += 1;
                asked == 1
            });
            if let Some(registry) = step.unwrap() {
                return (steps, registry);
            }
        }
    }

    #[test]
    fn an_image_read_a_record_group_at_a_time_answers_like_one_read_at_once() {
        let mut loaded = load(&many_clients(20_000), &crate::config::no_env);
        let mut pieces = image_of(&mut loaded, &EnvRecord::default()).into_iter();
        let mut reading = Reading::new(&crate::config::no_env, Box::new(move || pieces.next()));
        reading.accept().unwrap();
        let (steps, adopted) = read_a_unit_per_step(&mut reading);
        // 20,000 clients, contracts and keys take several groups each.
        assert!(steps > 6, "read in {steps} steps");
        assert_eq!(describe(&adopted), describe(&loaded));
        assert_eq!(
            reading.step(&mut || true).err(),
            Some("the image was read already".to_string())
        );
    }

    #[test]
    fn an_image_read_between_requests_compiles_its_plans_one_step_at_a_time() {
        // 40 plans, each with a policy of its own, and a client under every one of them.
        let plans: Vec<Value> = (0..40)
            .map(|i| {
                serde_json::json!({"planId": format!("p{i}"), "policies": [
                    {"policy": "simple-header", "config": {"addHeaders": [
                        {"headerName": "X-Plan", "headerValue": format!("p{i}"), "applyTo": "Request"}]}}]})
            })
            .collect();
        let clients: Vec<Value> = (0..40)
            .map(|i| {
                serde_json::json!({"organizationId": "o", "clientId": format!("c{i}"),
                    "version": "1", "apiKey": format!("k{i}"),
                    "contracts": [{"apiOrgId": "o", "apiId": "a", "apiVersion": "1", "plan": format!("p{i}")}]})
            })
            .collect();
        let mut doc: Value = serde_json::from_str(&config()).unwrap();
        doc["plans"] = Value::Array(plans);
        doc["clients"] = Value::Array(clients);
        let mut loaded = load(&doc.to_string(), &crate::config::no_env);
        let mut pieces = image_of(&mut loaded, &EnvRecord::default()).into_iter();
        let mut reading = Reading::new(&crate::config::no_env, Box::new(move || pieces.next()));
        // As a live update reads it: no `accept`, one unit of work per step.
        let (steps, adopted) = read_a_unit_per_step(&mut reading);
        // A step for each plan, then one for each of the ~45 distinct policies (the plans
        // compiled all in the first step, 47 steps in all, before plans were written apart).
        assert!(steps > 80, "read in {steps} steps");
        assert_eq!(describe(&adopted), describe(&loaded));
        let plan_of = |r: &Registry, key: &str| {
            let (_, c) = r.client_by_key(key).unwrap();
            format!("{:?}", c.contract(0).unwrap().plan)
        };
        assert_eq!(plan_of(&adopted, "k39"), plan_of(&loaded, "k39"));
        assert!(
            plan_of(&adopted, "k39").contains("p39"),
            "{}",
            plan_of(&adopted, "k39")
        );
    }

    #[test]
    fn an_image_whose_plan_does_not_load_is_refused_naming_the_plan_and_problem() {
        let mut loaded = load(&config(), &crate::config::no_env);
        let mut recipe = loaded.take_recipe().expect("a recipe");
        assert!(recipe.head.contains("\"simple-header\""), "{}", recipe.head);
        recipe.head = recipe
            .head
            .replace("\"simple-header\"", "\"no-such-policy\"");
        let pieces = written(&loaded, &recipe, &EnvRecord::default());
        let error = read_pieces(pieces, &crate::config::no_env).err().unwrap();
        assert!(
            error.starts_with("a plan does not load: plans[0]"),
            "{error}"
        );
    }

    #[test]
    fn a_table_damaged_past_what_accept_reads_is_refused_by_step() {
        let mut loaded = load(&many_clients(20_000), &crate::config::no_env);
        let mut whole = image_of(&mut loaded, &EnvRecord::default()).concat();
        // A byte in the key table, near the end: everything `start` reads is intact.
        let at = whole.len() - 1000;
        whole[at] ^= 0x5a;
        let mut pieces = vec![whole].into_iter();
        let mut reading = Reading::new(&crate::config::no_env, Box::new(move || pieces.next()));
        reading.accept().unwrap();
        let mut outcome = reading.step(&mut || true);
        assert!(outcome.is_err(), "a damaged image was read");
        outcome = reading.step(&mut || true);
        assert_eq!(
            outcome.err(),
            Some("the image was read already".to_string())
        );
    }

    #[test]
    fn a_sealed_image_is_told_from_one_with_any_byte_changed_or_cut() {
        let mut loaded = load(&config(), &crate::config::no_env);
        let pieces = image_of(&mut loaded, &EnvRecord::default());
        assert_eq!(sealed(&pieces), Ok(()));
        let whole = pieces.concat();
        for size in [1, 33, 4096] {
            let cut: Vec<Vec<u8>> = whole.chunks(size).map(<[u8]>::to_vec).collect();
            assert_eq!(sealed(&cut), Ok(()), "pieces of {size}");
        }
        for at in 0..whole.len() {
            let mut bad = whole.clone();
            bad[at] ^= 0x01;
            assert!(sealed(&[bad]).is_err(), "byte {at} changed");
        }
        assert!(sealed(&[whole[..whole.len() - 1].to_vec()]).is_err());
        assert!(sealed(&[]).is_err());
    }

    #[test]
    fn an_image_is_refused_where_an_environment_variable_differs() {
        // Apiman substitutes `${...}` in a policyJsonConfig.
        let text = config().replace(r#"\"10.0.0.0/8\"]}"#, r#"\"${NET}\"]}"#);
        assert!(text.contains("${NET}"));
        let env = |name: &str| (name == "NET").then(|| "10.0.0.0/8".to_string());
        let seen = EnvRecord::default();
        let recording = |name: &str| {
            let v = env(name);
            seen.note(name, &v);
            v
        };
        let mut loaded = load(&text, &recording);
        let pieces = image_of(&mut loaded, &seen);
        assert!(read_pieces(pieces.clone(), &env).is_ok());
        let other = |name: &str| (name == "NET").then(|| "10.0.0.0/16".to_string());
        let refused = read_pieces(pieces, &other).err().unwrap();
        assert_eq!(refused, "environment variable NET differs");
    }

    #[test]
    fn a_damaged_image_is_refused_however_little_changed() {
        let mut loaded = load(&config(), &crate::config::no_env);
        let whole = image_of(&mut loaded, &EnvRecord::default()).concat();
        for cut in 0..whole.len() {
            let short = whole[..cut].to_vec();
            assert!(
                read_pieces(vec![short], &crate::config::no_env).is_err(),
                "cut at {cut}"
            );
        }
        for at in 0..whole.len() {
            let mut bad = whole.clone();
            bad[at] ^= 0x5a;
            assert!(
                read_pieces(vec![bad], &crate::config::no_env).is_err(),
                "byte {at} flipped"
            );
        }
        let mut longer = whole.clone();
        longer.push(b' ');
        assert_eq!(
            read_pieces(vec![longer], &crate::config::no_env).err(),
            Some("bytes follow the image".to_string())
        );
    }

    #[test]
    fn an_image_from_a_registry_without_its_recipe_cannot_be_written() {
        let mut loaded = load(&config(), &crate::config::no_env);
        let recipe = Recipe {
            head: String::new(),
            specs: Vec::new(),
        };
        let _ = loaded.take_recipe();
        let refused = write(&loaded, &recipe, &EnvRecord::default(), &mut |_| true);
        assert!(refused.is_err());
    }

    #[test]
    fn a_compiled_image_answers_like_the_json_it_was_compiled_from() {
        let text = config();
        let (image, _) = compile(text.as_bytes()).unwrap();
        assert!(is_image(&image[..IMAGE_MARK]));
        assert!(!is_image(text.as_bytes()));
        let delivered = read_pieces(vec![image], &crate::config::no_env).unwrap();
        assert_eq!(
            describe(&delivered),
            describe(&load(&text, &crate::config::no_env))
        );
    }

    #[test]
    fn a_compiled_image_holds_digests_of_the_keys_not_the_keys() {
        let (image, _) = compile(config().as_bytes()).unwrap();
        let text = String::from_utf8_lossy(&image);
        for key in ["k1", "k2", "k3"] {
            assert!(!text.contains(&format!("\"{key}\"")), "{key}");
        }
    }

    #[test]
    fn a_chain_repeating_one_policy_many_times_compiles_and_reads_back() {
        let policy = serde_json::json!({"policy": "simple-header", "config": {"addHeaders": [
            {"headerName": "X-Seen", "headerValue": "1", "applyTo": "Request"}]}});
        let text = serde_json::json!({
            "plans": [{"planId": "gold", "policies": vec![policy; 70]}],
            "apis": [{"organizationId": "o", "apiId": "a", "version": "1", "endpoint": "http://h:1/"}],
            "clients": [{"organizationId": "o", "clientId": "c", "version": "1", "apiKey": "k1",
                "contracts": [{"apiOrgId": "o", "apiId": "a", "apiVersion": "1", "plan": "gold"}]}]
        })
        .to_string();
        let (image, _) = compile(text.as_bytes()).unwrap();
        let delivered = read_pieces(vec![image], &crate::config::no_env).unwrap();
        assert_eq!(
            describe(&delivered),
            describe(&load(&text, &crate::config::no_env))
        );
    }

    #[test]
    fn json_is_never_taken_for_an_image() {
        let looks_like = br#"{  "tollgate-registry-image/4": 1}"#;
        assert!(!is_image(looks_like));
    }

    #[test]
    fn a_registry_that_reads_the_environment_is_not_compiled() {
        let text = config().replace(r#"\"10.0.0.0/8\"]}"#, r#"\"${NET}\"]}"#);
        let refused = compile(text.as_bytes()).err().unwrap();
        assert!(
            refused[0].contains("environment variables (NET)"),
            "{refused:?}"
        );
    }

    #[test]
    fn an_image_of_another_build_is_refused_with_both_builds_named() {
        let (image, _) = compile(config().as_bytes()).unwrap();
        let mut other = image.clone();
        let at = IMAGE_MARK + 4; // the build, after the format and its length
        other[at] = if other[at] == b'0' { b'1' } else { b'0' };
        let refused = read_pieces(vec![other], &crate::config::no_env)
            .err()
            .unwrap();
        assert!(refused.contains("this filter is build"), "{refused}");
        assert!(refused.contains(BUILD), "{refused}");
    }

    #[test]
    fn the_fingerprint_ignores_how_the_bytes_are_cut() {
        let text = config();
        let mut whole = Fingerprint::default();
        whole.update(text.as_bytes());
        for size in [1, 3, 8, 13, 4096] {
            let mut f = Fingerprint::default();
            for piece in text.as_bytes().chunks(size) {
                f.update(piece);
            }
            assert_eq!(f.hex(), whole.hex(), "pieces of {size}");
        }
    }

    #[test]
    fn the_fingerprint_tells_any_one_changed_byte_apart() {
        let text = config().into_bytes();
        let of = |b: &[u8]| {
            let mut f = Fingerprint::default();
            f.update(b);
            f.hex()
        };
        let original = of(&text);
        for at in 0..text.len() {
            let mut other = text.clone();
            other[at] ^= 1;
            assert_ne!(of(&other), original, "byte {at}");
        }
        let mut longer = text.clone();
        longer.push(0);
        assert_ne!(of(&longer), original);
        assert_ne!(of(&text[..text.len() - 1]), original);
    }
}
