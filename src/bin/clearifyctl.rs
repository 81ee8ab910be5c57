fn main() {
    println!("clearifyctl {}", clearify_workerd::VERSION);
}
