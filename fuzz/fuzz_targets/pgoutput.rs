//! Fuzzes the pgoutput decoder and the transaction assembler: any byte sequence, split into
//! messages, must decode or fail cleanly, never panic.
#![no_main]

use cachewarden::source::postgres::pgoutput::{decode, Assembler};
use cachewarden::source::Lsn;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode(data);
    // Interpret the input as a sequence of [len: u8][payload] messages for the assembler.
    let mut a = Assembler::new();
    let mut lenient = Assembler::new();
    let mut rest = data;
    let mut at = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize).min(tail.len());
        let _ = a.feed(&tail[..n]);
        // The stream's path: never an error, whatever the bytes.
        at += 1;
        let _ = lenient.feed_lenient(&tail[..n], Lsn(at), chrono::DateTime::UNIX_EPOCH);
        rest = &tail[n..];
    }
});
