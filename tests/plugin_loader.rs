//! The plugin loader's errors, through the library API (the binaries'
//! messages are checked in `errors.rs`).

mod common;

use std::collections::BTreeMap;

use mapreduce::counters::UserCounters;
use mapreduce::plugin::{AppFailure, Capabilities, Plugin, PluginError};
use mapreduce::{JobContext, OutputFormat, VecValues};

fn loaded(app: &str) -> Plugin {
    let plugin = Plugin::load(&common::plugin(app)).unwrap();
    plugin.init(&JobContext { reduces: 1, ..JobContext::default() }).unwrap();
    plugin
}

#[test]
fn loads_a_plugin_and_calls_it() {
    let plugin = loaded("wordcount");
    assert_eq!(plugin.name(), "WordCount");
    assert_eq!(plugin.capabilities(), Capabilities { combiner: true, partitioner: false, output: OutputFormat::KeyValue });
    let mut pairs = Vec::new();
    let counters = UserCounters::default();
    plugin.map("f", b"a b a", 0, &mut |k, v| pairs.push((k.to_vec(), v.to_vec())), &counters).unwrap();
    pairs.sort();
    assert_eq!(pairs, [(b"a".to_vec(), b"2".to_vec()), (b"b".to_vec(), b"1".to_vec())], "counted in the task");
    plugin.map("g", b"c", 0, &mut |_, _| {}, &counters).unwrap();
    assert_eq!(counters.take(), BTreeMap::from([("words".to_string(), 4)]), "the app's counter crossed the ABI");
    let mut out = Vec::new();
    plugin.reduce(b"a", &mut VecValues::new(vec![b"1".to_vec(), b"1".to_vec()]), &mut out, &counters).unwrap();
    assert_eq!(out, b"2");
    out.clear();
    plugin.combine(b"a", &mut VecValues::new(vec![b"2".to_vec(), b"3".to_vec()]), &mut out, &counters).unwrap();
    assert_eq!(out, b"5");
    assert_eq!(plugin.partition(b"a", &mapreduce::partition::Partitions::new(10)), Ok(mapreduce::partition::partition_of(b"a", 10)));
}

#[test]
fn calls_before_init_are_refused() {
    let plugin = Plugin::load(&common::plugin("indexer")).unwrap();
    let err = plugin.map("f", b"x", 0, &mut |_, _| {}, &UserCounters::default()).unwrap_err();
    assert_eq!(err, AppFailure::Error("the app was called before init".to_string()));
}

#[test]
fn a_panic_in_the_app_is_an_error_not_a_crash() {
    let plugin = loaded("faulty");
    let counters = UserCounters::default();
    let err = plugin.map("doc", b"PANIC-IN-MAP", 0, &mut |_, _| {}, &counters).unwrap_err();
    assert_eq!(err, AppFailure::Panic("deliberate panic in map of doc".to_string()));
    let err = plugin.map("doc", b"ERROR-IN-MAP", 0, &mut |_, _| {}, &counters).unwrap_err();
    assert_eq!(err, AppFailure::Error("deliberate error in map of doc".to_string()));
    // The plugin still works after a panic.
    let mut n = 0;
    plugin.map("doc", b"still fine", 0, &mut |_, _| n += 1, &counters).unwrap();
    assert_eq!(n, 2);
    let mut out = Vec::new();
    let err = plugin.reduce(b"panicinreduce", &mut VecValues::new(vec![]), &mut out, &counters).unwrap_err();
    assert!(matches!(err, AppFailure::Panic(_)));
    assert!(out.is_empty(), "a failed reduce writes no output");
}

#[test]
fn refuses_a_plugin_of_another_abi_version() {
    match Plugin::load(&common::plugin("wrong_abi")) {
        Err(PluginError::AbiMismatch { found: 999, expected: mapreduce::abi::ABI_VERSION, .. }) => {}
        other => panic!("expected an ABI mismatch, got {other:?}"),
    }
}

#[test]
fn refuses_a_shared_library_that_is_not_a_plugin() {
    // Any system library this test process has mapped (libc, say) will do;
    // not one of ours, which other tests in this process load as plugins.
    let ours = common::worker_bin().parent().unwrap().to_string_lossy().into_owned();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let Some(library) = maps.split_whitespace().find(|w| w.starts_with('/') && w.contains(".so") && !w.starts_with(&ours)) else {
        eprintln!("skipped: no shared library mapped into the test process");
        return;
    };
    match Plugin::load(std::path::Path::new(library)) {
        Err(PluginError::NotAPlugin { symbol, .. }) => assert_eq!(symbol, "mapreduce_plugin_abi_version"),
        other => panic!("{library}: expected NotAPlugin, got {other:?}"),
    }
}

#[test]
fn refuses_missing_files_and_non_libraries() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(Plugin::load(&dir.path().join("nope.so")), Err(PluginError::NoSuchFile { .. })));
    let text = dir.path().join("text.so");
    std::fs::write(&text, "not ELF").unwrap();
    assert!(matches!(Plugin::load(&text), Err(PluginError::NotALibrary { .. })));
}
