//! AFL++ harness: see clearify_fuzz::broker_url.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        clearify_fuzz::broker_url(data);
    });
}
