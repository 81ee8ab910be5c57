//! AFL++ harness: see clearify_fuzz::heartbeat.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        clearify_fuzz::heartbeat(data);
    });
}
