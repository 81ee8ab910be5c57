//! AFL++ harness: see clearify_fuzz::framer.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        clearify_fuzz::framer(data);
    });
}
