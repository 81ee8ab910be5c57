//! AFL++ harness: see clearify_fuzz::env_file.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        clearify_fuzz::env_file(data);
    });
}
