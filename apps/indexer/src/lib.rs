//! Inverted index: for every word, `<word> <n> <doc1>,<doc2>,...` — the
//! distinct input files containing it, sorted, and their number.

use std::collections::{BTreeSet, HashSet};

use mapreduce::{text, App, AppResult, Emitter, MapInput, Values};

/// The indexer app.
#[derive(Default)]
pub struct Indexer;

impl App for Indexer {
    fn map(&self, input: &MapInput<'_>, emit: &mut Emitter<'_>) -> AppResult {
        let mut seen = HashSet::new();
        text::for_each_word(input.contents, |word| {
            if seen.insert(word) {
                emit.emit(word, input.filename);
            }
        });
        Ok(())
    }

    fn reduce(&self, _key: &[u8], values: &mut Values<'_>, out: &mut Vec<u8>) -> AppResult {
        // A document can be named more than once when its input was mapped in
        // pieces; the index lists each once.
        let mut documents = BTreeSet::new();
        while let Some(doc) = values.next() {
            if !documents.contains(doc) {
                documents.insert(doc.to_vec());
            }
        }
        out.extend_from_slice(documents.len().to_string().as_bytes());
        out.push(b' ');
        for (i, doc) in documents.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(doc);
        }
        Ok(())
    }
}

mapreduce::export_app!(Indexer);

#[cfg(test)]
mod tests {
    use super::*;
    use mapreduce::VecValues;

    #[test]
    fn each_document_once_sorted() {
        let mut pairs = Vec::new();
        let mut sink = |k: &[u8], v: &[u8]| pairs.push((k.to_vec(), v.to_vec()));
        let input = MapInput { filename: "b.txt", contents: b"dog cat dog", offset: 0 };
        Indexer.map(&input, &mut Emitter::new(&mut sink)).unwrap();
        assert_eq!(pairs, vec![(b"dog".to_vec(), b"b.txt".to_vec()), (b"cat".to_vec(), b"b.txt".to_vec())]);

        let docs = ["c.txt", "a.txt", "c.txt", "b.txt"].map(|d| d.as_bytes().to_vec());
        let mut out = Vec::new();
        Indexer.reduce(b"dog", &mut Values::new(&mut VecValues::new(docs)), &mut out).unwrap();
        assert_eq!(out, b"3 a.txt,b.txt,c.txt");
    }
}
