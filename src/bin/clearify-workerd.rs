fn main() {
    println!("clearify-workerd {}", clearify_workerd::VERSION);
}
