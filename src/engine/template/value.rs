//! Template values beyond minijinja's own: JSON objects as [`OrderedMap`]s that keep their keys in
//! order, the way Python dicts do, so `tojson`, `.items()` and `for k in m` see the caller's order
//! (JSON text parsed here keeps its written order; a `serde_json::Value` has it only when
//! serde_json is built with `preserve_order`), and [`MutableList`] for namespace queues.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use minijinja::value::{Enumerator, Object, ObjectExt, ObjectRepr};
use minijinja::{Error, ErrorKind, State, Value};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// A map that remembers insertion order; lookups are linear, which is fast for the small objects
/// that chat messages and tool schemas are made of.
#[derive(Debug, Default)]
pub(crate) struct OrderedMap {
    entries: Vec<(Value, Value)>,
}

impl OrderedMap {
    /// Inserts or replaces `key`; a replaced key keeps its first position, like a Python dict.
    pub(crate) fn insert(&mut self, key: impl Into<Value>, value: Value) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// The finished template value.
    pub(crate) fn into_value(self) -> Value {
        Value::from_object(self)
    }
}

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.mapped_enumerator(|this| Box::new(this.entries.iter().map(|(k, _)| k.clone())))
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// A list with Python's mutating methods (`append`, `extend`, `insert`, `pop`, `clear`), for
/// templates that keep a queue in a `namespace`. Plain template lists stay immutable.
#[derive(Debug, Default)]
pub(crate) struct MutableList {
    items: Mutex<Vec<Value>>,
}

impl MutableList {
    /// A mutable copy of a sequence value.
    pub(crate) fn from_value(seq: &Value) -> Result<Value, Error> {
        let items = Mutex::new(seq.try_iter()?.collect());
        Ok(Value::from_object(Self { items }))
    }

    fn items(&self) -> MutexGuard<'_, Vec<Value>> {
        self.items
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Object for MutableList {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.items().get(key.as_usize()?).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Seq(self.items().len())
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        let mut items = self.items();
        let bad = |what: &str| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("list.{method}: {what}"),
            )
        };
        let index = |i: &Value, len: usize| {
            let i = i.as_i64().ok_or_else(|| bad("index must be an integer"))?;
            let i = if i < 0 { i + len as i64 } else { i };
            usize::try_from(i).map_err(|_| bad("index out of range"))
        };
        match (method, args) {
            ("append", [item]) => items.push(item.clone()),
            ("extend", [more]) => items.extend(more.try_iter()?),
            ("insert", [at, item]) => {
                let at = index(at, items.len())?.min(items.len());
                items.insert(at, item.clone());
            }
            ("pop", []) => return items.pop().ok_or_else(|| bad("pop from empty list")),
            ("pop", [at]) => {
                let at = index(at, items.len())?;
                if at >= items.len() {
                    return Err(bad("index out of range"));
                }
                return Ok(items.remove(at));
            }
            ("clear", []) => items.clear(),
            _ => return Err(Error::from(ErrorKind::UnknownMethod)),
        }
        Ok(Value::from(()))
    }
}

/// Converts a `serde_json::Value` to a template value, keeping object key order.
pub(crate) fn from_json(value: &serde_json::Value) -> Value {
    // Deserializing from an in-memory JSON value cannot fail: every variant has a visitor arm.
    JsonSeed.deserialize(value).unwrap_or_default()
}

/// Parses JSON text into a template value, keeping object key order.
pub(crate) fn parse_json(text: &str) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = JsonSeed.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Builds a template value from any JSON deserializer.
struct JsonSeed;

impl<'de> DeserializeSeed<'de> for JsonSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::from(()))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::from(()))
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        JsonSeed.deserialize(de)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(JsonSeed)? {
            items.push(item);
        }
        Ok(Value::from(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = OrderedMap::default();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(JsonSeed)?;
            out.insert(key, value);
        }
        Ok(out.into_value())
    }
}
