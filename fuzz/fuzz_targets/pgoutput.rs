//! Fuzzes the pgoutput decoder and the transaction assembler: any byte sequence, split into
//! messages, must decode or fail cleanly, never panic.
#![no_main]

use cachewarden::source::postgres::pgoutput::{decode, Assembler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode(data);
    // Interpret the input as a sequence of [len: u8][payload] messages for the assembler.
    let mut a = Assembler::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize).min(tail.len());
        let _ = a.feed(&tail[..n]);
        rest = &tail[n..];
    }
});
