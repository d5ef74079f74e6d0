//! How a Streaming command's output lines become pairs, as Hadoop
//! Streaming's `stream.map.output.field.separator` and
//! `stream.num.map.output.key.fields` have it: the key is the line up to
//! the `key_fields`-th separator, the value the rest after it (a line with
//! fewer separators is all key, with an empty value). Pairs go back to
//! commands as `key SEPARATOR value` lines. Partitioning may use fewer of
//! the key's fields (Hadoop's `KeyFieldBasedPartitioner -k1,N`), so that
//! keys sharing their first fields meet in one reduce, sorted by the rest.

use mapreduce::AppError;

/// The separator and field counts of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    separator: Vec<u8>,
    key_fields: usize,
    partition_fields: usize,
}

impl Fields {
    /// From the `separator`, `key_fields` and `partition_fields`
    /// parameters (a tab, 1, and the key's fields when left out).
    pub fn new(separator: Option<&str>, key_fields: Option<&str>, partition_fields: Option<&str>) -> Result<Fields, AppError> {
        let separator = match separator {
            None => b"\t".to_vec(),
            Some(given) => unescape(given).ok_or("--param separator= must not be empty (\\t is a tab)")?,
        };
        let count = |name: &str, given: Option<&str>, default: usize| -> Result<usize, AppError> {
            match given {
                None => Ok(default),
                Some(text) => match text.parse::<usize>() {
                    Ok(n) if n >= 1 => Ok(n),
                    _ => Err(format!("--param {name}={text}: give a whole number from 1").into()),
                },
            }
        };
        let key_fields = count("key_fields", key_fields, 1)?;
        let partition_fields = count("partition_fields", partition_fields, key_fields)?;
        if partition_fields > key_fields {
            return Err(format!("--param partition_fields={partition_fields} is more than the key's {key_fields} fields (key_fields)").into());
        }
        Ok(Fields { separator, key_fields, partition_fields })
    }

    /// `line` (without its newline) split into its key and value.
    pub fn split<'a>(&self, line: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        match self.nth_separator(line, self.key_fields) {
            Some(at) => (line.get(..at).unwrap_or_default(), line.get(at + self.separator.len()..).unwrap_or_default()),
            None => (line, b""),
        }
    }

    /// Whether partitions are chosen by fewer fields than the whole key.
    pub fn partitions_by_prefix(&self) -> bool {
        self.partition_fields < self.key_fields
    }

    /// The part of `key` that chooses its partition: its first
    /// `partition_fields` fields.
    pub fn partition_key<'a>(&self, key: &'a [u8]) -> &'a [u8] {
        match self.nth_separator(key, self.partition_fields) {
            Some(at) => key.get(..at).unwrap_or_default(),
            None => key,
        }
    }

    /// Appends the line `key SEPARATOR value` to `out`.
    pub fn write_pair(&self, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(key);
        out.extend_from_slice(&self.separator);
        out.extend_from_slice(value);
        out.push(b'\n');
    }

    /// Where the `n`-th separator of `line` begins.
    fn nth_separator(&self, line: &[u8], n: usize) -> Option<usize> {
        let width = self.separator.len();
        let mut from = 0;
        for found in 1..=n {
            let at = from + line.get(from..)?.windows(width).position(|window| window == self.separator.as_slice())?;
            if found == n {
                return Some(at);
            }
            from = at + width;
        }
        None
    }
}

/// `given` with `\t` read as a tab and `\\` as a backslash (a tab is hard
/// to give on a command line); `None` if it is empty.
fn unescape(given: &str) -> Option<Vec<u8>> {
    let mut text = String::new();
    let mut chars = given.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('t')) => {
                text.push('\t');
                chars.next();
            }
            ('\\', Some('\\')) => {
                text.push('\\');
                chars.next();
            }
            _ => text.push(c),
        }
    }
    (!text.is_empty()).then(|| text.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_line_up_to_the_nth_separator() {
        let tab = Fields::new(None, None, None).unwrap();
        assert_eq!(tab.split(b"a\tb\tc"), (&b"a"[..], &b"b\tc"[..]));
        assert_eq!(tab.split(b"no tab here"), (&b"no tab here"[..], &b""[..]));
        assert_eq!(tab.split(b"\tvalue"), (&b""[..], &b"value"[..]));
        let two = Fields::new(Some("::"), Some("2"), Some("1")).unwrap();
        assert_eq!(two.split(b"x::y::z::w"), (&b"x::y"[..], &b"z::w"[..]));
        assert_eq!(two.split(b"x::y"), (&b"x::y"[..], &b""[..]));
        assert_eq!(two.partition_key(b"x::y"), b"x");
        assert!(two.partitions_by_prefix());
        let mut line = Vec::new();
        two.write_pair(b"x::y", b"z", &mut line);
        assert_eq!(line, b"x::y::z\n");
        assert_eq!(Fields::new(Some("\\t"), None, None).unwrap(), tab);
        assert_eq!(unescape("\\\\t"), Some(b"\\t".to_vec()), "an escaped backslash, then t");
    }

    #[test]
    fn bad_field_settings_are_refused_naming_the_parameter() {
        assert!(Fields::new(Some(""), None, None).unwrap_err().to_string().contains("separator"));
        assert!(Fields::new(None, Some("0"), None).unwrap_err().to_string().contains("key_fields=0"));
        assert!(Fields::new(None, Some("x"), None).unwrap_err().to_string().contains("key_fields=x"));
        assert!(Fields::new(None, Some("1"), Some("2")).unwrap_err().to_string().contains("partition_fields=2"));
    }
}
