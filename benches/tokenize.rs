//! criterion bench for tokenize (to be written)
fn main() {}
