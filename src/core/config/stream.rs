//! Reading a configuration without holding it whole: the top-level object is walked by serde,
//! and each entry of `apis`, `plans` and `clients` is handed over as a small JSON value of its
//! own, to be checked and added to the registry, then dropped. A registry of a million clients
//! is never a tree of a million objects in memory (a wasm VM's memory never shrinks: the peak of
//! a load would be its size for good).
//!
//! A load walks the document twice: first for the gateway settings, the APIs and the plans
//! (clients are only counted, so the tables can be sized exactly), then for the clients, which
//! refer to them. The order of the top-level fields does not matter.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Which walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Settings, APIs, plans; clients counted.
    Catalogue,
    /// Clients.
    Clients,
}

/// What a walk hands over.
pub enum Item {
    Gateway(Value),
    /// An entry of `apis`, `plans` or `clients`, with its index.
    Entry(Section, usize, Value),
    /// How many entries `clients` has.
    ClientCount(usize),
    /// A client's text, in the clients pass (read by the fast reader, else the full one).
    RawClient(usize, Box<serde_json::value::RawValue>),
    /// A top-level field tollgate does not know (its name).
    Unknown(String),
    /// A section that is neither an array nor an object: its name and what it is.
    NotAnArray(Section, &'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Apis,
    Plans,
    Clients,
}

impl Section {
    pub fn name(self) -> &'static str {
        match self {
            Section::Apis => "apis",
            Section::Plans => "plans",
            Section::Clients => "clients",
        }
    }
}

/// Walks a configuration document in `pass`, handing each item to `sink`. Returns serde's error
/// (with line and column) when the document is not valid JSON or not an object.
pub fn walk<'de, D: Deserializer<'de>>(
    deserializer: D,
    pass: Pass,
    sink: &mut dyn FnMut(Item),
) -> Result<(), D::Error> {
    deserializer.deserialize_map(Top { pass, sink })
}

struct Top<'s> {
    pass: Pass,
    sink: &'s mut dyn FnMut(Item),
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("one JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (pass, sink) = (self.pass, self.sink);
        while let Some(key) = map.next_key::<String>()? {
            let section = match key.as_str() {
                "apis" => Some(Section::Apis),
                "plans" => Some(Section::Plans),
                "clients" => Some(Section::Clients),
                _ => None,
            };
            match (pass, section, key.as_str()) {
                (Pass::Catalogue, None, "gateway") => {
                    let v: Value = map.next_value()?;
                    if !v.is_null() {
                        sink(Item::Gateway(v));
                    }
                }
                (Pass::Catalogue, None, _) => {
                    map.next_value::<IgnoredAny>()?;
                    sink(Item::Unknown(key));
                }
                (Pass::Catalogue, Some(Section::Clients), _) => {
                    let n = map.next_value_seed(Count)?;
                    sink(Item::ClientCount(n));
                }
                (Pass::Catalogue, Some(s), _) => {
                    map.next_value_seed(Entries {
                        section: s,
                        sink,
                        raw: false,
                    })?;
                }
                (Pass::Clients, Some(s @ Section::Clients), _) => {
                    map.next_value_seed(Entries {
                        section: s,
                        sink,
                        raw: true,
                    })?;
                }
                (Pass::Clients, _, _) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Counts an array's entries without keeping them.
struct Count;

impl<'de> DeserializeSeed<'de> for Count {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Count {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(1)
    }

    fn visit_unit<E>(self) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_str<E>(self, _: &str) -> Result<usize, E> {
        Ok(1)
    }

    fn visit_bool<E>(self, _: bool) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_i64<E>(self, _: i64) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_u64<E>(self, _: u64) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_f64<E>(self, _: f64) -> Result<usize, E> {
        Ok(0)
    }
}

/// Hands over each entry of a section as its own value. A single object counts as an array of
/// one (Jackson's ACCEPT_SINGLE_VALUE_AS_ARRAY, common in hand-edited Apiman exports), as the
/// whole-document reader does.
struct Entries<'s> {
    section: Section,
    sink: &'s mut dyn FnMut(Item),
    /// Hand array entries over as text (`Item::RawClient`).
    raw: bool,
}

impl<'de> DeserializeSeed<'de> for Entries<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Entries<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        if self.raw {
            while let Some(v) = seq.next_element::<Box<serde_json::value::RawValue>>()? {
                (self.sink)(Item::RawClient(i, v));
                i += 1;
            }
            return Ok(());
        }
        while let Some(v) = seq.next_element::<Value>()? {
            (self.sink)(Item::Entry(self.section, i, v));
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let v = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        (self.sink)(Item::Entry(self.section, 0, v));
        Ok(())
    }

    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        (self.sink)(Item::Entry(self.section, 0, Value::String(s.to_string())));
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        (self.sink)(Item::NotAnArray(self.section, "a boolean"));
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        (self.sink)(Item::NotAnArray(self.section, "a number"));
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        (self.sink)(Item::NotAnArray(self.section, "a number"));
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        (self.sink)(Item::NotAnArray(self.section, "a number"));
        Ok(())
    }
}

use serde::Deserialize as _;
