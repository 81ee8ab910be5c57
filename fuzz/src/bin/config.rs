//! AFL++ harness: see clearify_fuzz::config.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        clearify_fuzz::config(data);
    });
}
