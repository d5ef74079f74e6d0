//! Typed keys and values, on top of the byte API (feature `typed`): an app
//! emits any `serde` types and reads them back, at no cost to apps that
//! keep to bytes (they do not build this module).
//!
//! Keys are encoded so that their bytes sort as the values do (`storekey`:
//! integers big-endian with the sign bit flipped, strings and byte strings
//! escaped and terminated, tuples and structs field by field), because the
//! framework groups and sorts keys by their bytes: a reduce sees keys in
//! the order of their Rust values, and the sort app's range partitioning
//! stays meaningful. Values are encoded compactly (`postcard`: varints,
//! no field names). Neither format describes itself: decode with the type
//! that was encoded.
//!
//! The output is still bytes: a typed reduce formats its own output, and
//! usually declares [`OutputFormat::Raw`](crate::OutputFormat::Raw) so that
//! encoded keys do not reach the output files.
//!
//! ```
//! # use mapreduce_app::{typed, App, AppResult, Emitter, MapInput, OutputFormat, Values, VecValues};
//! /// Sums the amounts of `name,amount` lines per name.
//! struct Totals;
//!
//! impl App for Totals {
//!     fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
//!         for (_, line) in input.lines() {
//!             let line = std::str::from_utf8(line)?;
//!             let (name, amount) = line.split_once(',').ok_or("no comma")?;
//!             emit.emit_typed(&name, &amount.parse::<i64>()?)?;
//!         }
//!         Ok(())
//!     }
//!     fn reduce(&self, key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
//!         let name: String = typed::decode_key(key)?;
//!         let mut total = 0i64;
//!         while let Some(amount) = values.next_typed::<i64>() {
//!             total += amount?;
//!         }
//!         out.extend_from_slice(format!("{name}\t{total}\n").as_bytes());
//!         Ok(())
//!     }
//!     fn output_format(&self) -> OutputFormat {
//!         OutputFormat::Raw
//!     }
//! }
//!
//! let mut pairs = Vec::new();
//! let mut sink = |k: &[u8], v: &[u8]| pairs.push((k.to_vec(), v.to_vec()));
//! let input = MapInput { filename: "f", contents: b"ann,5\nbob,-2\nann,7\n", offset: 0 };
//! Totals.map(&input, &mut Emitter::new(&mut sink)).unwrap();
//! let ann: Vec<Vec<u8>> = pairs.iter().filter(|(k, _)| k == &typed::encode_key(&"ann").unwrap()).map(|(_, v)| v.clone()).collect();
//! let mut out = Vec::new();
//! let mut values = VecValues::new(ann);
//! Totals.reduce(&typed::encode_key(&"ann").unwrap(), &mut Values::new(&mut values), &mut out).unwrap();
//! assert_eq!(out, b"ann\t12\n");
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::app::{AppError, AppResult, Emitter, Values};

/// `key` in the order-preserving key encoding.
pub fn encode_key<K: Serialize + ?Sized>(key: &K) -> Result<Vec<u8>, AppError> {
    storekey::serialize(key).map_err(|e| format!("encoding a key: {e}").into())
}

/// A key encoded by [`encode_key`], as type `K`.
pub fn decode_key<K: DeserializeOwned>(bytes: &[u8]) -> Result<K, AppError> {
    storekey::deserialize(bytes).map_err(|e| format!("decoding a key: {e}").into())
}

/// `value` in the compact value encoding.
pub fn encode_value<V: Serialize + ?Sized>(value: &V) -> Result<Vec<u8>, AppError> {
    postcard::to_allocvec(value).map_err(|e| format!("encoding a value: {e}").into())
}

/// A value encoded by [`encode_value`], as type `V`.
pub fn decode_value<V: DeserializeOwned>(bytes: &[u8]) -> Result<V, AppError> {
    postcard::from_bytes(bytes).map_err(|e| format!("decoding a value: {e}").into())
}

impl Emitter<'_> {
    /// Emits `key` and `value`, encoded as the module docs say.
    pub fn emit_typed<K: Serialize + ?Sized, V: Serialize + ?Sized>(&mut self, key: &K, value: &V) -> AppResult {
        self.emit(encode_key(key)?, encode_value(value)?);
        Ok(())
    }
}

impl Values<'_> {
    /// The next value, decoded as `V`; `None` when the key's values are over.
    pub fn next_typed<V: DeserializeOwned>(&mut self) -> Option<Result<V, AppError>> {
        self.next().map(decode_value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_keys_sort_as_their_values() {
        let numbers = [i64::MIN, -1000, -1, 0, 1, 255, 256, 70_000, i64::MAX];
        let encoded: Vec<Vec<u8>> = numbers.iter().map(|n| encode_key(n).unwrap()).collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]), "{encoded:?}");
        let words = ["", "a", "a\0", "ab", "b", "é"];
        let encoded: Vec<Vec<u8>> = words.iter().map(|w| encode_key(w).unwrap()).collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]), "{encoded:?}");
        let pairs = [("a".to_string(), 2u32), ("a".to_string(), 10), ("b".to_string(), 1)];
        let encoded: Vec<Vec<u8>> = pairs.iter().map(|p| encode_key(p).unwrap()).collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]), "{encoded:?}");
        for (pair, bytes) in pairs.iter().zip(&encoded) {
            assert_eq!(&decode_key::<(String, u32)>(bytes).unwrap(), pair);
        }
    }

    #[test]
    fn values_round_trip_compactly_and_bad_bytes_are_an_error() {
        let value = (7u64, "seven".to_string(), vec![1i32, -1]);
        let bytes = encode_value(&value).unwrap();
        assert!(bytes.len() <= 12, "{} bytes", bytes.len());
        assert_eq!(decode_value::<(u64, String, Vec<i32>)>(&bytes).unwrap(), value);
        assert!(decode_value::<(u64, String)>(&[0xff]).is_err());
        assert!(decode_key::<String>(&[0xff, 0xff]).is_err());
    }
}
