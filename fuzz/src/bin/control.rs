//! AFL++ harness: see clearify_fuzz::control.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        clearify_fuzz::control(data);
    });
}
