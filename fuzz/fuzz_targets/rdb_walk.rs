//! Feeds arbitrary bytes to the RDB walker, which must return a verdict for
//! any input without panicking, hanging or allocating without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Most inputs fail at the magic; prefixing a valid header some of the time
    // lets the fuzzer reach the opcodes and value encodings.
    let _ = sessbackup::rdb::walk(data);
    if data.first().is_some_and(|byte| byte & 1 == 1) {
        let mut with_header = b"REDIS0012".to_vec();
        with_header.extend_from_slice(&data[1..]);
        let _ = sessbackup::rdb::walk(&with_header[..]);
    }
});
